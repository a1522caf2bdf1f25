"""Bad input of every kind: one 'imgfs: ...' line on stderr, a non-zero exit status, never a traceback."""

from __future__ import annotations

import os
import shutil

import pytest

from clihelp import assert_one_line_error, docker_archive, run
from conftest import IMAGES
from imgfs.cli import commands
from tarmaker import D, F, tar_of

SEED = IMAGES / "seed.docker-oci.tar"


def _copy(tmp_path, name: str, keep: float | None = None):
    dst = tmp_path / name
    shutil.copyfile(IMAGES / name, dst)
    if keep is not None:
        os.truncate(dst, int(os.path.getsize(dst) * keep))
    return dst


@pytest.mark.parametrize("cmd", [["images"], ["layers"], ["ls"], ["find", "--name", "x"], ["cat", "/etc/passwd"],
                                  ["extract", "/etc", "-o", "OUT"]])
def test_not_an_archive(capsysbinary, tmp_path, cmd):
    text = tmp_path / "notes.txt"
    text.write_text("hello\nworld\n" * 100)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    argv = [cmd[0], None, *[str(tmp_path / "out") if c == "OUT" else c for c in cmd[1:]]]
    for bad, needle in [(text, "notes.txt"), (empty, "empty"), (tmp_path, "directory"),
                        (tmp_path / "missing.tar", "No such file or directory")]:
        argv[1] = bad
        assert_one_line_error(run(capsysbinary, *argv), needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["seed.docker-oci.tar", "seed.skopeo-oci-gzip.tar", "seed.docker-oci.tar.gz",
                                  "seed.docker-legacy.tar"])
def test_truncated_archive(capsysbinary, tmp_path, name):
    cut = _copy(tmp_path, name, keep=0.6)
    cmds = (["layers"], ["cat", None, "/app/trace.log"], ["find", None, "--name", "trace.log"])
    for cmd in cmds[:1] if name.endswith(".gz") else cmds:  # a cut .gz takes seconds to be found bad
        argv = [cmd[0], cut, *[c for c in cmd[1:] if c is not None]]
        if not name.endswith(".gz"):
            res = run(capsysbinary, *argv)
            assert res.rc == 1 and "Traceback" not in res.err
            assert res.err.splitlines()[-1].startswith(f"imgfs: {cut}")  # after any warnings
        assert_one_line_error(run(capsysbinary, "-q", *argv), str(cut))


def test_archive_with_last_layer_cut_short(capsysbinary, tmp_path):
    big = os.urandom(20000)
    layers = [tar_of([D("etc"), F("etc/base", b"base\n"), F("etc/early", b"early\n")]),
              tar_of([F("etc/early", b"new\n"), F("big", big), F("z", b"z")])]
    path = docker_archive(tmp_path / "cut.tar", layers)
    os.truncate(path, path.read_bytes().find(big) + 10000)  # inside the last layer's 'big'
    res = run(capsysbinary, "cat", path, "/etc/base")
    assert res.rc == 0 and res.out == b"base\n"
    assert "warning" in res.err
    # The cut layer keeps what lies before the cut: its own etc/early, and big as an error, never short.
    assert run(capsysbinary, "-q", "cat", path, "/etc/early").out == b"new\n"
    assert_one_line_error(run(capsysbinary, "-q", "cat", path, "/big"), "big", "cut off")
    assert_one_line_error(run(capsysbinary, "-q", "cat", path, "/z"), "/z", "no such file")
    res = run(capsysbinary, "extract", path, "/", "-o", tmp_path / "out")
    assert res.rc == 1 and "Traceback" not in res.err and "runs past the end" in res.err.splitlines()[0]
    assert "big" in res.err.splitlines()[-1]
    assert (tmp_path / "out/etc/base").read_bytes() == b"base\n"
    assert (tmp_path / "out/etc/early").read_bytes() == b"new\n"
    assert not (tmp_path / "out/big").exists()


def test_missing_blob(capsysbinary, tmp_path):
    layers = [tar_of([F("a", b"a")]), tar_of([F("b", b"b")])]
    path = docker_archive(tmp_path / "missing.tar", layers, omit={1})
    res = run(capsysbinary, "layers", path)
    assert res.rc == 0 and "warning" in res.err and "missing" in res.err
    assert [line.split("\t")[3:5] for line in res.lines] == [["10240", "1"], ["-", "-"]]
    # Without layer 2 the merged root would be stale (what it deletes or replaces shown as it was): refused,
    # even with -q, unless --partial asks for it, and then a warning says so.
    for cmd in (["cat", path, "/a"], ["ls", path], ["find", path], ["diff", path],
                ["extract", path, "/", "-o", tmp_path / "out"]):
        assert_one_line_error(run(capsysbinary, "-q", *cmd), "layer 2", "cannot be read", "stale")
    res = run(capsysbinary, "cat", "--partial", path, "/a")
    assert res.rc == 0 and res.out == b"a" and "partial view: layer 2" in res.err
    assert_one_line_error(run(capsysbinary, "-q", "cat", "--partial", path, "/b"), "/b", "no such file")
    assert_one_line_error(run(capsysbinary, "-q", "ls", path, "--layer", "2"), "layer 2", "cannot be read")
    res = run(capsysbinary, "find", "--partial", path)  # the readable layer and the partial view answer
    assert res.rc == 0 and res.lines == ["1 step 1\t/a", "merged\t/a"] and "layer 2" in res.err


@pytest.mark.parametrize("manifest", [b"{not json", b"[]", b'{"a": 1}', b'[{"Config": 5}]', b"\xff\xfe"])
def test_broken_manifest_json(capsysbinary, tmp_path, manifest):
    path = docker_archive(tmp_path / "bad.tar", [tar_of([F("a", b"a")])], manifest_bytes=manifest)
    for cmd in (["images"], ["layers"], ["ls"]):
        res = run(capsysbinary, "-q", cmd[0], path)
        if manifest == b"[]":  # valid JSON: an archive holding no image
            if cmd == ["images"]:
                assert res.rc == 0 and res.out == b""
            else:
                assert_one_line_error(res, "no image")
            continue
        assert_one_line_error(res, str(path))


def test_bad_selections(capsysbinary):
    multi = IMAGES / "multi.docker-oci.tar"
    assert_one_line_error(run(capsysbinary, "ls", multi), "3 images", "seed:latest", "--image")
    assert_one_line_error(run(capsysbinary, "ls", multi, "--image", "nginx"), "nginx", "whiteout:latest")
    assert_one_line_error(run(capsysbinary, "ls", SEED, "--platform", "linux/s390x"), "s390x", "linux/amd64")
    assert_one_line_error(run(capsysbinary, "cat", SEED, "/app/trace.log", "--layer", "COPY-NOPE"), "COPY-NOPE")
    assert_one_line_error(run(capsysbinary, "find", SEED, "--layer", "0"), "--layer 0")
    assert_one_line_error(run(capsysbinary, "find", multi, "--image", "sha256:"), "sha256:")
    res = run(capsysbinary, "ls", multi, "--image", "links:1.0")
    assert res.rc == 0 and "srv" in res.lines


@pytest.mark.parametrize("argv", [[], ["nosuch"], ["ls"], ["find", str(SEED), "--type", "x"], ["cat", str(SEED)],
                                  ["extract", str(SEED), "/app"], ["layers", str(SEED), "--bogus"]])
def test_usage_errors_exit_2(capsysbinary, argv):
    res = run(capsysbinary, *argv)
    assert res.rc == 2 and "Traceback" not in res.err and "usage:" in res.err and res.out == b""


def test_help_and_version(capsysbinary):
    res = run(capsysbinary, "--help")
    assert res.rc == 0 and b"extract" in res.out and b"exit status" in res.out
    for sub in ("images", "layers", "diff", "ls", "find", "cat", "extract", "verify", "cache", "mount", "umount",
                "completion"):
        res = run(capsysbinary, sub, "--help")
        assert res.rc == 0 and res.out.startswith(b"usage: imgfs " + sub.encode())
    assert run(capsysbinary, "--version").out.startswith(b"imgfs ")


def test_interrupt_and_internal_error_are_one_line(capsysbinary, monkeypatch):
    def interrupted(args, ui):
        raise KeyboardInterrupt

    def buggy(args, ui):
        raise RuntimeError("boom")

    monkeypatch.delenv("IMGFS_DEBUG", raising=False)
    parser_func = commands.images
    monkeypatch.setattr(commands, "images", interrupted)
    try:
        from imgfs.cli import main
        capsysbinary.readouterr()
        assert main(["images", str(SEED)]) == 130
        monkeypatch.setattr(commands, "images", buggy)
        assert main(["images", str(SEED)]) == 1
        err = capsysbinary.readouterr().err.decode()
        assert err.splitlines() == ["imgfs: interrupted",
                                    "imgfs: internal error: RuntimeError: boom (set IMGFS_DEBUG=1 for a traceback)"]
    finally:
        monkeypatch.setattr(commands, "images", parser_func)


def test_quiet_silences_warnings_not_errors(capsysbinary, tmp_path):
    path = docker_archive(tmp_path / "m.tar", [tar_of([F("a", b"a")]), tar_of([F("b", b"b")])], omit={1})
    assert run(capsysbinary, "-q", "layers", path).err == ""
    assert run(capsysbinary, "layers", path, "-q").err == ""
    assert_one_line_error(run(capsysbinary, "cat", path, "/b", "--quiet", "--partial"), "/b")


def test_a_short_history_is_counted_in_english(capsysbinary, tmp_path):
    path = docker_archive(tmp_path / "short.tar", [tar_of([F("a", b"a")]), tar_of([F("b", b"b")])], history=["one"])
    res = run(capsysbinary, "layers", path, "--names")
    assert res.rc == 0
    assert "history has 1 non-empty entry for 2 layers" in res.err, res.err
