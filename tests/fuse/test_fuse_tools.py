"""Ordinary tools through the mount, as subprocesses: find, grep -r, cp -a, tar -c, sha256sum."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import IMAGES
from truthlib import diff, listing_from_dir, load_truth


def sh(*cmd: str | Path, cwd: Path | None = None) -> str:
    """Run a command; fail the test with its stderr unless it succeeds without complaint."""
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert res.returncode == 0 and not res.stderr, f"{cmd}: rc={res.returncode} {res.stderr}"
    return res.stdout


@pytest.fixture
def links(mounter) -> Path:
    return mounter(IMAGES / "links.docker-oci.tar")


def test_find_lists_every_entry_once(links: Path) -> None:
    truth = load_truth("links.rootfs.umoci.jsonl")
    found = sh("find", ".", cwd=links / "merged").splitlines()
    assert sorted(p[1:] or "/" for p in found) == sorted(truth)  # no "filesystem loop" warning either
    files = sh("find", links / "merged", "-type", "f").splitlines()
    assert len(files) == sum(r["type"] in ("file", "hardlink") for r in truth.values())
    every = sh("find", links).splitlines()  # merged/ and every layer: inodes never repeat across trees
    assert len(every) > len(found)


def test_grep_recursive(mounter) -> None:
    mp = mounter(IMAGES / "seed.docker-oci.tar")
    out = sh("grep", "-rl", "trace", mp / "merged/app")
    assert out.splitlines() == [str(mp / "merged/app/trace.log")]


def test_cp_archive_copies_everything_faithfully(links: Path, tmp_path: Path) -> None:
    sh("cp", "-a", links / "merged", tmp_path / "copy")
    problems = diff(load_truth("links.rootfs.umoci.jsonl"), listing_from_dir(tmp_path / "copy"))
    assert not problems, "\n".join(problems[:20])


def test_tar_create_from_the_mount(links: Path, tmp_path: Path) -> None:
    sh("tar", "-cf", tmp_path / "out.tar", "-C", links / "merged", ".")
    truth = load_truth("links.rootfs.umoci.jsonl")
    with tarfile.open(tmp_path / "out.tar") as tf:
        got = {"/" + m.name.removeprefix(".").lstrip("/"): m for m in tf.getmembers()}
    assert sorted(got) == sorted(truth)
    for path, rec in truth.items():
        m = got[path]
        if rec["type"] == "symlink":
            assert m.issym() and m.linkname == rec["linkname"]
        elif rec["type"] == "file":
            assert m.isfile() and m.size == rec["size"]
        elif rec["type"] == "hardlink":  # tar saw the shared inode and stored a link, not a second copy
            assert m.islnk() or m.isfile()
    assert sum(m.islnk() for m in got.values()) == sum(r["type"] == "hardlink" for r in truth.values())


def test_sha256sum_of_every_file(mounter) -> None:
    mp = mounter(IMAGES / "meta.skopeo-oci-gzip.tar")
    truth = load_truth("meta.rootfs.umoci.jsonl")
    files = sorted(p for p, r in truth.items() if r["type"] in ("file", "hardlink"))
    out = sh("sha256sum", *[p.lstrip("/") for p in files], cwd=mp / "merged")
    sums = {"/" + line.split(None, 1)[1].lstrip("*"): line.split()[0] for line in out.splitlines()}
    assert sums == {p: truth[p]["sha256"] for p in files}
