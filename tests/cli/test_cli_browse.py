"""`imgfs find`, `ls` and `cat` on the real fixtures, checked against the truth."""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile

import pytest

from clihelp import assert_one_line_error, docker_archive, run
from conftest import IMAGES, truth_index
from tarmaker import F, S, tar_of
from truthlib import load_truth

SEED = IMAGES / "seed.docker-oci.tar"
LINKS = IMAGES / "links.skopeo-oci-zstd.tar"
SEEDS = sorted(n for n in truth_index() if n.startswith("seed"))


def _truth_of(name: str, platform: str | None = None) -> dict:
    return load_truth(truth_index()[name]["images"][0]["rootfs_truth"][0])


@pytest.mark.parametrize("name", SEEDS)
def test_find_trace_log_names_the_run_layer_and_merged(capsysbinary, name):
    args = ["--platform", "linux/amd64"] if "oci-index" in name else []
    top = run(capsysbinary, "layers", IMAGES / name, "--json", *args).json()["layers"][-1]["name"]
    res = run(capsysbinary, "find", IMAGES / name, "--name", "trace.log", *args)
    assert res.rc == 0, res.err
    assert res.lines == [f"{top}\t/app/trace.log", "merged\t/app/trace.log"]
    assert "RUN sh -c 'echo trace > \u2215app\u2215trace.log'" in top


def test_find_layer_only_and_json_lines(capsysbinary):
    res = run(capsysbinary, "find", SEED, "--name", "*.toml", "--layer", "COPY")
    assert res.lines == ["3 COPY ctx\u2215 \u2215app\u2215\t/app/conf/app.toml"]
    res = run(capsysbinary, "find", SEED, "--path", "/app/*", "--type", "l", "--json")
    hits = [json.loads(line) for line in res.lines]
    assert [(h["layer"], h["number"], h["path"], h["type"], h["linkname"]) for h in hits] == [
        ("3 COPY ctx\u2215 \u2215app\u2215", 3, "/app/config-link", "symlink", "conf/app.toml"),
        ("merged", None, "/app/config-link", "symlink", "conf/app.toml")]


def test_find_type_dir_and_path_glob(capsysbinary):
    res = run(capsysbinary, "find", SEED, "--path", "/app/*", "--type", "d", "--layer", "-1")
    assert res.lines == []
    res = run(capsysbinary, "find", SEED, "--path", "/app*", "--type", "d")
    got = {tuple(line.split("\t")) for line in res.lines}
    assert ("merged", "/app/bin") in got and ("2 WORKDIR \u2215app", "/app") in got
    assert all(p.startswith("/app") for _, p in got)


def test_find_every_merged_path_matches_truth(capsysbinary):
    res = run(capsysbinary, "find", IMAGES / "whiteout.docker-oci.tar")
    merged = {line.split("\t")[1] for line in res.lines if line.startswith("merged\t")}
    assert merged == set(_truth_of("whiteout.docker-oci.tar")) - {"/"}
    # a layer view shows whiteout markers; the merged one never does
    assert any("/.wh." in line for line in res.lines if not line.startswith("merged\t"))


@pytest.mark.parametrize("name", ["seed.docker-oci.tar", "seed.docker-legacy.tar.gz", "meta.skopeo-oci-gzip.tar",
                                  "links.skopeo-oci-zstd.tar", "seed.podman-docker.tar"])
def test_cat_bytes_match_truth_sha256(capsysbinary, name):
    truth = _truth_of(name)
    files = [p for p, r in truth.items() if r["type"] == "file" and not p.startswith(("/bin/", "/sbin/"))]
    files.append("/bin/busybox")
    for path in files:
        res = run(capsysbinary, "cat", IMAGES / name, path)
        assert res.rc == 0, res.err
        assert hashlib.sha256(res.out).hexdigest() == truth[path]["sha256"], path


@pytest.mark.parametrize(("path", "target"), [
    ("/app/config-link", "/app/conf/app.toml"), ("app/./bin/../config-link", "/app/conf/app.toml")])
def test_cat_through_symlink(capsysbinary, path, target):
    want = run(capsysbinary, "cat", SEED, target).out
    assert want.startswith(b'name = "seed"')
    assert run(capsysbinary, "cat", SEED, path).out == want


def test_cat_symlink_chains_through_directory_links(capsysbinary):
    truth = _truth_of("links.skopeo-oci-zstd.tar")
    for link, target in [("/srv/abs-link", "/srv/data/orig.txt"), ("/srv/dir/rel-link", "/srv/data/orig.txt"),
                         ("/srv/chain-link/g.txt", "/srv/dir/sub/g.txt"),
                         ("/srv/dir/self/self/f.txt", "/srv/dir/f.txt"), ("/srv/hl-to-lower", "/srv/data/orig.txt")]:
        res = run(capsysbinary, "cat", LINKS, link)
        assert hashlib.sha256(res.out).hexdigest() == truth[target]["sha256"], link


def test_cat_errors(capsysbinary):
    assert_one_line_error(run(capsysbinary, "cat", SEED, "/app"), "/app: is a directory")
    assert_one_line_error(run(capsysbinary, "cat", SEED, "/nope"), "/nope: no such file", "merged view")
    assert_one_line_error(run(capsysbinary, "cat", LINKS, "/srv/dangling"), "dangling")
    assert_one_line_error(run(capsysbinary, "cat", SEED, "/app/README.txt", "--layer", "4"), "no such file", "layer")


def test_cat_from_one_layer(capsysbinary):
    res = run(capsysbinary, "cat", SEED, "/app/trace.log", "--layer", "RUN")
    assert res.out == b"trace\n"
    res = run(capsysbinary, "cat", IMAGES / "whiteout.docker-oci.tar", "/etc/group", "--layer", "1")
    assert res.rc == 0 and b"root" in res.out  # deleted in a later layer, still in the base layer


def test_ls_root_and_dir(capsysbinary):
    truth = _truth_of("seed.docker-oci.tar")
    res = run(capsysbinary, "ls", SEED)
    assert res.lines == sorted(p[1:] for p in truth if p.count("/") == 1 and p != "/")
    res = run(capsysbinary, "ls", SEED, "/app/")
    assert res.lines == ["README.txt", "bin", "conf", "config-link", "trace.log"]


def test_ls_long_matches_truth(capsysbinary):
    truth = _truth_of("seed.docker-oci.tar")
    res = run(capsysbinary, "ls", SEED, "/app", "-l")
    rows = {r.split("\t")[5]: r.split("\t") for r in res.lines}
    assert rows["config-link -> conf/app.toml"][0] == "lrwxrwxrwx"
    readme = rows["README.txt"]
    assert readme[:4] == ["-rw-r--r--", "0", "0", str(truth["/app/README.txt"]["size"])]
    assert rows["bin"][0] == "drwxr-xr-x"


def test_ls_of_file_symlink_and_layer(capsysbinary):
    res = run(capsysbinary, "ls", SEED, "/app/config-link", "-l")
    assert res.lines[0].split("\t")[5] == "/app/config-link -> conf/app.toml"
    res = run(capsysbinary, "ls", SEED, "/", "--layer", "4")
    assert res.lines == ["app", "dev", "etc", "proc", "sys"]
    res = run(capsysbinary, "ls", IMAGES / "meta.docker-oci.tar", "/", "-l", "--json")
    doc = res.json()
    assert doc["path"] == "/" and doc["layer"] is None
    tmp = next(e for e in doc["entries"] if e["name"] == "tmp")
    assert tmp["mode"] == "1777" and tmp["type"] == "dir"


def test_ls_mode_strings_on_meta(capsysbinary):
    truth = _truth_of("meta.docker-oci.tar")
    res = run(capsysbinary, "ls", IMAGES / "meta.docker-oci.tar", "/", "--json")
    for e in res.json()["entries"]:
        assert e["mode"] == truth[e["path"]]["mode"] and e["uid"] == truth[e["path"]]["uid"]


def test_ls_missing_and_not_found_layer(capsysbinary):
    assert_one_line_error(run(capsysbinary, "ls", SEED, "/nope"), "no such file or directory")
    assert_one_line_error(run(capsysbinary, "ls", SEED, "--layer", "9"), "4 layers")
    assert_one_line_error(run(capsysbinary, "ls", SEED, "--layer", "apt-get"), "matches no layer", "WORKDIR")


def test_ls_long_special_modes(capsysbinary):
    res = run(capsysbinary, "ls", IMAGES / "meta.skopeo-oci-gzip.tar", "/opt/meta", "-l")
    rows = {r.split("\t")[5]: r.split("\t")[:4] for r in res.lines}
    assert rows["empty-suid"][0] == "-rwsr-sr-x"
    assert rows["emptydir"][0] == "drwxrwxrwt"
    assert rows["fifo"][0] == "prw-r--r--"
    assert rows["secret"][0] == "----------"
    assert rows["empty"] == ["-rw-r-----", "12345", "54321", "0"]
    assert rows["random.bin"][3] == "2097152"
    assert_one_line_error(run(capsysbinary, "cat", IMAGES / "meta.docker-oci.tar", "/opt/meta/fifo"), "fifo")


def _names_archive(tmp_path):
    layer = tar_of([F("d/bad\udcff.txt", b"1"), F("d/back\\xff.txt", b"2"), F("d/new\nline", b"3"),
                    F("d/caf\u00e9", b"4"), S("d/link", "to\udcfe")], fmt=tarfile.GNU_FORMAT)
    return docker_archive(tmp_path / "names.tar", [layer])


def test_json_names_are_lossless(capsysbinary, tmp_path):
    archive = _names_archive(tmp_path)
    entries = {e["name"]: e for e in run(capsysbinary, "ls", archive, "/d", "--json").json()["entries"]}
    bad = entries["bad\ufffd.txt"]  # the text, for people; the bytes, exactly, for programs
    assert base64.b64decode(bad["name_b64"]) == b"bad\xff.txt"
    assert base64.b64decode(bad["path_b64"]) == b"/d/bad\xff.txt"
    real = entries["back\\xff.txt"]  # a real backslash is text, and nothing says otherwise
    assert real["path"] == "/d/back\\xff.txt" and "path_b64" not in real and "name_b64" not in real
    assert entries["new\nline"]["path"] == "/d/new\nline" and entries["caf\u00e9"]["path"] == "/d/caf\u00e9"
    assert base64.b64decode(entries["link"]["linkname_b64"]) == b"to\xfe"
    hits = [json.loads(line) for line in run(capsysbinary, "find", archive, "--name", "bad*", "--json").lines]
    assert [base64.b64decode(h["path_b64"]) for h in hits] == [b"/d/bad\xff.txt"] * 2
    changes = run(capsysbinary, "diff", archive, "--json").json()["layers"][0]["changes"]
    assert sorted(base64.b64decode(c["path_b64"]) for c in changes if "path_b64" in c) == [b"/d/bad\xff.txt"]
    # the tab-separated form stays one line a name, escaped for display
    assert run(capsysbinary, "ls", archive, "/d").lines == [
        "back\\xff.txt", "bad\\xff.txt", "caf\u00e9", "link", "new\\nline"]


def test_find_relative_path_pattern_starts_at_the_root(capsysbinary):
    rel = run(capsysbinary, "find", SEED, "--path", "app/*", "--type", "f")
    assert rel.rc == 0 and rel.lines == run(capsysbinary, "find", SEED, "--path", "/app/*", "--type", "f").lines
    assert "merged\t/app/trace.log" in rel.lines
    assert run(capsysbinary, "find", SEED, "--path", "trace.log").lines == []  # a whole path, not a name


def test_cat_of_a_directory_names_it(capsysbinary):
    assert_one_line_error(run(capsysbinary, "cat", SEED, "/"), "imgfs: /: is a directory")
