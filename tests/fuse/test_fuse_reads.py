"""Reading through the mount: many readers at once, and an archive that changes under a live mount."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import imgfs
from conftest import IMAGES
from truthlib import load_truth


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(65536), b""):
            h.update(chunk)
    return h.hexdigest()


def test_many_threads_and_processes_read_correct_bytes(mounter) -> None:
    mp = mounter(IMAGES / "meta.skopeo-oci-gzip.tar")
    truth = load_truth("meta.rootfs.umoci.jsonl")
    files = {mp / "merged" / p.lstrip("/"): r["sha256"] for p, r in truth.items() if r["type"] == "file"}
    big = max(files, key=lambda p: p.stat().st_size)
    work = [*files, *[big] * 8]  # different files, and the same one many times over
    # 32 readers at once: 16 processes started first, then 16 threads while they run
    procs = [subprocess.Popen(["sha256sum", str(big), *map(str, files)], stdout=subprocess.PIPE, text=True)
             for _ in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(sha, work * 3))
    assert got == [files[p] for p in work * 3]
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        for line in out.splitlines():
            digest, name = line.split(None, 1)
            assert digest == files[Path(name.lstrip("*"))]


def _layer_files(archive: Path) -> list[tuple[int, int, str, dict[str, str]]]:
    """Each layer blob's (start, end) in the archive file, its directory name, and its files' sha256."""
    out = []
    with imgfs.open_archive(archive, use_cache=False) as a:
        img = a.image()
        for la in img.layers:
            blob = a.blobs.open(la.member)
            tree = img.layer_tree(la.position)
            files = {k.decode(): hashlib.sha256(b"".join(tree.read_all(r))).hexdigest()
                     for k, r in tree.walk() if tree.entry_for(k, r).kind == "file" and tree.entry_for(k, r).size}
            out.append((blob.base, blob.base + blob.size, la.name, files))
    return out


@pytest.mark.parametrize("name", ["seed.docker-oci.tar", "seed.skopeo-oci-gzip.tar"])
def test_truncated_archive_gives_eio_and_the_mount_survives(name: str, mounter, tmp_path: Path) -> None:
    archive = tmp_path / name
    shutil.copyfile(IMAGES / name, archive)
    layers = sorted(la for la in _layer_files(archive) if la[3])
    cut = layers[-1][0] + 700  # into the blob stored last
    victim = "/" + next(iter(layers[-1][3]))
    _, _, kept_layer, kept_files = layers[0]  # stored first: before the cut
    mp = mounter(archive, cache_dir=str(tmp_path / "cache"))
    merged = mp / "merged"
    truth = load_truth("seed.rootfs.umoci.jsonl")
    assert os.path.getsize(merged / victim.lstrip("/")) == truth[victim]["size"]  # the trees exist now
    os.truncate(archive, cut)
    # Even the bytes before the cut may be another file's now (cp of a shorter archive truncates, then
    # writes): every read answers EIO, and the mount keeps answering the rest.
    for path in [merged / victim.lstrip("/")] * 3 + [mp / "layers" / kept_layer / p for p in kept_files]:
        with pytest.raises(OSError) as e:
            path.read_bytes()
        assert e.value.errno == errno.EIO
    assert sorted(os.listdir(mp)) == ["config.json", "layers", "manifest.json", "merged"]  # still serving
    assert (mp / "config.json").read_bytes()
    log = mp.with_name(mp.name + ".log").read_text()
    assert sum(victim.lstrip("/") in line for line in log.splitlines()) == 1, log  # one line for 3 reads
    assert "the archive changed while mounted (its size differs)" in log


def test_archive_rewritten_in_place_with_the_same_size_gives_eio(mounter, tmp_path: Path) -> None:
    archive = tmp_path / "seed.tar"
    shutil.copyfile(IMAGES / "seed.docker-oci.tar", archive)
    mp = mounter(archive, cache_dir=str(tmp_path / "cache"))
    busybox = mp / "merged/bin/busybox"
    assert sha(busybox) == load_truth("seed.rootfs.umoci.jsonl")["/bin/busybox"]["sha256"]
    data = bytearray(archive.read_bytes())
    data[512:] = bytes(len(data) - 512)  # same size, same inode, other bytes
    stamp = archive.stat()
    with open(archive, "r+b") as fh:
        fh.write(data)
    os.utime(archive, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # as cp -p or rsync -t leave it
    for path in (mp / "merged/etc/passwd", mp / "merged/app/trace.log"):  # not read before: not in the page cache
        with pytest.raises(OSError) as e:
            path.read_bytes()
        assert e.value.errno == errno.EIO
    assert "the archive changed while mounted (its modification or change time differs)" in \
        mp.with_name(mp.name + ".log").read_text()


def test_deleted_or_replaced_archive_keeps_serving_what_was_mounted(mounter, tmp_path: Path) -> None:
    archive = tmp_path / "seed.tar"
    shutil.copyfile(IMAGES / "seed.docker-oci.tar", archive)
    mp = mounter(archive, cache_dir=str(tmp_path / "cache"))
    shutil.copyfile(IMAGES / "links.docker-oci.tar", tmp_path / "other.tar")
    os.replace(tmp_path / "other.tar", archive)
    assert (mp / "merged/app/trace.log").read_bytes() == b"trace\n"
    os.unlink(archive)
    assert sha(mp / "merged/bin/busybox") == load_truth("seed.rootfs.umoci.jsonl")["/bin/busybox"]["sha256"]
