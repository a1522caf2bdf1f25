"""An image tar read in one pass from a pipe: the same listings and bytes as the file, flat memory, clear refusals."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import imgfs
from conftest import IMAGES, archives, truth_index
from imgfs.errors import FormatError, ImgfsError
from imgfs.stream import open_stream_archive
from tarmaker import ArchiveBuilder, F, config_for, tar_of
from truthlib import listing_from_tree

IMGFS = [sys.executable, "-m", "imgfs"]


def piped(path: Path) -> subprocess.Popen:
    """`cat path |`: the archive arriving on a real pipe."""
    return subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)


def run_piped(path: Path, *args: str) -> subprocess.CompletedProcess:
    """`cat path | imgfs ARGS` (ARGS holding '-')."""
    feeder = piped(path)
    try:
        return subprocess.run([*IMGFS, *args], stdin=feeder.stdout, capture_output=True, timeout=120)
    finally:
        feeder.stdout.close()  # type: ignore[union-attr]
        feeder.wait()


def imgfs_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*IMGFS, *args], capture_output=True, timeout=120)


def _config_prefix(entry: dict) -> str:
    config = entry.get("config_digest") or "sha256:" + entry["config"].rsplit("/", 1)[-1].removesuffix(".json")
    return config.removeprefix("sha256:")[:16]


@pytest.mark.parametrize("name", archives())
def test_every_tree_and_every_byte_through_a_pipe_are_those_of_the_file(name: str, tmp_path: Path) -> None:
    feeder = piped(IMAGES / name)
    try:
        with open_stream_archive(feeder.stdout, keep=["/"], subtrees=True, warn=lambda m: None) as a, \
                imgfs.open_archive(IMAGES / name, cache_dir=tmp_path, warn=lambda m: None) as f:
            assert [i.config_digest for i in a.images] == [i.config_digest for i in f.images]
            assert a.kind == f.kind
            for pi, fi in zip(a.images, f.images, strict=True):
                assert [la.name for la in pi.layers] == [la.name for la in fi.layers]
                assert [la.blob_size for la in pi.layers] == [la.blob_size for la in fi.layers]
                assert [la.compression for la in pi.layers] == [la.compression for la in fi.layers]
                assert listing_from_tree(pi.merged()) == listing_from_tree(fi.merged())
                for n in range(len(fi.layers)):
                    assert listing_from_tree(pi.layer_tree(n)) == listing_from_tree(fi.layer_tree(n))
    finally:
        feeder.wait()


@pytest.mark.parametrize("name", archives())
def test_find_and_cat_through_a_pipe_print_what_they_print_for_the_file(name: str, tmp_path: Path) -> None:
    entry = truth_index()[name]["images"][0]
    pick = ["--image", _config_prefix(entry), "--no-cache"]
    want = imgfs_cli("find", str(IMAGES / name), *pick)
    got = run_piped(IMAGES / name, "find", "-", *pick)
    assert got.returncode == want.returncode == 0, got.stderr
    assert got.stdout == want.stdout and got.stdout
    files = [json.loads(line) for line in (IMAGES.parent / "truth" / entry["rootfs_truth"][0]).read_text().splitlines()]
    biggest = max((r for r in files if r["type"] == "file"), key=lambda r: r["size"])["path"]
    want = imgfs_cli("cat", str(IMAGES / name), biggest, *pick)
    got = run_piped(IMAGES / name, "cat", "-", biggest, *pick)
    assert got.returncode == want.returncode == 0, got.stderr
    assert got.stdout == want.stdout


def test_layers_diff_ls_extract_and_images_read_a_pipe(tmp_path: Path) -> None:
    seed = IMAGES / "seed.docker-oci.tar"
    for args in (["layers"], ["diff"], ["ls", "/app", "-l"], ["images"], ["layers", "--json"]):
        want = imgfs_cli(args[0], str(seed), *args[1:], "--no-cache")
        got = run_piped(seed, args[0], "-", *args[1:])
        assert got.returncode == 0, got.stderr
        if "--json" in args:  # the same but for the archive's name
            assert json.loads(got.stdout) == json.loads(want.stdout) | {"archive": "-"}
        else:
            assert got.stdout == want.stdout and got.stdout
    got = run_piped(seed, "extract", "-", "/app", "-o", str(tmp_path / "out"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out/app/trace.log").read_bytes() == b"trace\n"
    assert not (tmp_path / "out/etc").exists()


def test_a_fifo_and_dev_stdin_are_read_as_pipes_not_called_empty(tmp_path: Path) -> None:
    seed = IMAGES / "seed.docker-legacy.tar"
    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as out:
            out.write(seed.read_bytes())

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        got = imgfs_cli("find", str(fifo), "--name", "trace.log")
    finally:
        if writer.is_alive():  # the reader failed before opening: let the writer finish
            with open(fifo, "rb") as fh:
                fh.read()
        writer.join()
    assert got.returncode == 0, got.stderr
    assert got.stdout.endswith(b"merged\t/app/trace.log\n")
    got = run_piped(seed, "cat", "/dev/stdin", "/app/trace.log")
    assert (got.returncode, got.stdout) == (0, b"trace\n"), got.stderr


@pytest.mark.parametrize("command", [["mount", "-", "/nonexistent"], ["verify", "-"]])
def test_what_needs_random_access_says_to_save_to_a_file_first(command: list[str]) -> None:
    got = run_piped(IMAGES / "seed.docker-oci.tar", *command)
    assert got.returncode == 2
    assert b"save it to a file first" in got.stderr and got.stderr.count(b"\n") == 1 and not got.stdout


def test_bytes_the_pass_did_not_keep_are_an_error_never_other_bytes() -> None:
    # /bin/sh links to /bin/busybox, which went by before anyone knew it was needed
    got = run_piped(IMAGES / "seed.docker-oci.tar", "cat", "-", "/bin/sh")
    assert got.returncode == 1 and got.stdout == b""
    assert b"save the archive to a file first" in got.stderr and got.stderr.count(b"\n") == 1
    with open_stream_archive(io.BytesIO((IMAGES / "seed.docker-oci.tar").read_bytes()), keep=["/app/trace.log"]) as a:
        tree = a.image().merged()
        assert b"".join(tree.read_all(tree.nodes[b"app/trace.log"])) == b"trace\n"
        with pytest.raises(FormatError, match="without being kept"):
            b"".join(tree.read_all(tree.nodes[b"etc/passwd"]))


def test_an_empty_or_foreign_pipe_is_refused_in_one_line() -> None:
    for data, says in ((b"", b"nothing came through the pipe"), (b"x" * 4096, b"not a tar archive")):
        got = subprocess.run([*IMGFS, "find", "-"], input=data, capture_output=True, timeout=60)
        assert got.returncode == 1 and says in got.stderr and got.stderr.count(b"\n") == 1, got.stderr


def test_manifest_json_after_the_blobs_and_gzip_layers_resolve_at_the_end() -> None:
    import gzip

    layers = [tar_of([F("a.txt", b"lower")]), tar_of([F("a.txt", b"upper"), F("b.txt", b"b")])]
    b = ArchiveBuilder()
    cfg = b.blob(config_for(layers), "application/vnd.oci.image.config.v1+json")
    lds = [b.blob(gzip.compress(la, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip") for la in layers]
    man = b.blob({"schemaVersion": 2, "config": cfg, "layers": lds}, "application/vnd.oci.image.manifest.v1+json")
    b.oci_index([man])  # written after the blobs, as docker save >= 25 does
    b.add("manifest.json", [{"Config": "blobs/sha256/" + cfg["digest"][7:], "RepoTags": ["app:1"],
                             "Layers": ["blobs/sha256/" + d["digest"][7:] for d in lds]}])
    with open_stream_archive(io.BytesIO(b.tar()), keep=["a.txt"]) as a:
        img = a.image("app:1")
        assert [la.compression for la in img.layers] == ["gzip", "gzip"]
        tree = img.merged()
        assert b"".join(tree.read_all(tree.nodes[b"a.txt"])) == b"upper"
        assert sorted(k for k, _ in tree.walk()) == [b"", b"a.txt", b"b.txt"]


@pytest.mark.parametrize("name", ["meta.docker-oci.tar", "meta.skopeo-oci-gzip.tar", "seed.docker-oci.tar.gz"])
def test_the_spool_has_a_bound_and_passing_it_is_a_clear_error(name: str) -> None:
    data = (IMAGES / name).read_bytes()
    with pytest.raises(ImgfsError, match="save the archive to a file first"):
        open_stream_archive(io.BytesIO(data), keep=["/"], subtrees=True, spool_limit=1 << 20)


GENERATOR = textwrap.dedent("""
    import io, json, sys, tarfile
    size = int(sys.argv[1])
    zero = bytes(1 << 20)

    def _h(name, n):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = n, 0o644, 1700000000
        return ti.tobuf(tarfile.GNU_FORMAT)

    def pad(n):
        return bytes(-n % 512)

    small = b"hello from a big image\\n"
    layer_head = _h("small.txt", len(small)) + small + pad(len(small)) + _h("big.bin", size)
    layer_tail = pad(size) + bytes(1024)
    layer_size = len(layer_head) + size + len(layer_tail)
    fake = "ab" * 32
    config = json.dumps({"architecture": "amd64", "os": "linux", "history": [{"created_by": "RUN gen"}],
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + fake]}}).encode()
    manifest = json.dumps([{"Config": "blobs/sha256/cf", "RepoTags": ["gen:1"],
                            "Layers": ["blobs/sha256/" + fake]}]).encode()
    out = sys.stdout.buffer
    out.write(_h("blobs/sha256/" + fake, layer_size) + layer_head)
    left = size
    while left:
        n = min(left, len(zero))
        out.write(zero[:n])
        left -= n
    out.write(layer_tail + pad(layer_size))
    for name, data in (("blobs/sha256/cf", config), ("manifest.json", manifest)):
        out.write(_h(name, len(data)) + data + pad(len(data)))
    out.write(bytes(1024))
""")

MEASURE = textwrap.dedent("""
    import resource, sys
    from imgfs.stream import open_stream_archive
    a = open_stream_archive(sys.stdin.buffer, keep=["/small.txt"])
    tree = a.image().merged()
    data = b"".join(tree.read_all(tree.nodes[b"small.txt"]))
    big = tree.entry_for(b"big.bin", tree.nodes[b"big.bin"]).size
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, big, data.decode().strip())
""")


def _peak_kib(size: int) -> tuple[int, int, str]:
    gen = subprocess.Popen([sys.executable, "-c", GENERATOR, str(size)], stdout=subprocess.PIPE)
    try:
        res = subprocess.run([sys.executable, "-c", MEASURE], stdin=gen.stdout, capture_output=True, text=True,
                             timeout=600)
    finally:
        gen.stdout.close()  # type: ignore[union-attr]
        gen.wait()
    assert res.returncode == 0, res.stderr
    rss, big, text = res.stdout.split(maxsplit=2)
    return int(rss), int(big), text.strip()


def test_peak_memory_stays_flat_as_the_piped_image_grows_to_a_gigabyte() -> None:
    small_rss, small_size, text = _peak_kib(16 << 20)
    big_rss, big_size, big_text = _peak_kib(1 << 30)
    assert (small_size, big_size) == (16 << 20, 1 << 30)
    assert text == big_text == "hello from a big image"
    assert big_rss - small_rss < 16 << 10, f"peak RSS {small_rss} KiB at 16 MiB, {big_rss} KiB at 1 GiB"


def test_a_link_at_a_kept_path_keeps_its_target_when_the_target_is_still_to_come() -> None:
    from tarmaker import H, S

    layers = [tar_of([S("etc/os-release", "../usr/lib/os-release"), S("lib", "usr/lib"), F("bin/busybox", b"BB"),
                      S("bin/sh", "busybox")]),
              tar_of([F("usr/lib/os-release", b"ID=test\n"), H("data/copy", "usr/lib/os-release")])]
    b = ArchiveBuilder()
    b.add("manifest.json", [b.docker_image(layers, ["app:1"])])
    data = b.tar()
    for path, want in (("/etc/os-release", b"ID=test\n"), ("/lib/os-release", b"ID=test\n")):
        with open_stream_archive(io.BytesIO(data), keep=[path]) as a:
            tree = a.image().merged()
            key = tree.resolve(path)
            assert b"".join(tree.read_all(tree.nodes[key])) == want
    for path in ("/bin/sh", "/data/copy"):  # their targets went by before the links: an error, never other bytes
        with open_stream_archive(io.BytesIO(data), keep=[path]) as a:
            tree = a.image().merged()
            with pytest.raises(FormatError, match="without being kept"):
                b"".join(tree.read_all(tree.nodes[tree.resolve(path)]))


def test_images_and_attestations_through_a_pipe_are_those_of_the_file(tmp_path: Path) -> None:
    from attestmaker import buildx_archive

    path = Path(buildx_archive(tmp_path)[0])
    for args in (["images"], ["attestations", "--platform", "linux/arm64", "--json"]):
        want = imgfs_cli(args[0], str(path), *args[1:], "--no-cache")
        got = run_piped(path, args[0], "-", *args[1:])
        assert got.returncode == want.returncode == 0, got.stderr
        assert got.stdout.replace(b'"archive": "-"', b'"archive": "%s"' % bytes(path)) == want.stdout
