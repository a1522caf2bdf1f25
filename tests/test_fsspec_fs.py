"""The fsspec backend: fsspec.open/cat/find/get over the merged root and over one layer, read-only."""

from __future__ import annotations

import hashlib

import fsspec
import pytest

import imgfs
from conftest import IMAGES
from truthlib import load_truth

SEED = str(IMAGES / "seed.docker-oci.tar")


@pytest.fixture
def fs(tmp_path):
    return fsspec.filesystem("imgfs", fo=SEED, cache_dir=tmp_path)


def test_open_by_url_through_the_entry_point(tmp_path) -> None:
    with fsspec.open("imgfs://app/trace.log", fo=SEED, cache_dir=tmp_path) as fh:
        data = fh.read()
    assert hashlib.sha256(data).hexdigest() == load_truth("seed.rootfs.umoci.jsonl")["/app/trace.log"]["sha256"]


def test_find_cat_and_get_come_from_fsspec(fs, tmp_path) -> None:
    truth = load_truth("seed.rootfs.umoci.jsonl")
    want_files = {p for p, r in truth.items() if p.startswith("/app/") and r["type"] != "dir"}
    assert set(fs.find("/app")) == want_files
    assert fs.cat("/app/trace.log") == b"trace\n"
    fs.get("/app/trace.log", str(tmp_path / "out.log"))
    assert (tmp_path / "out.log").read_bytes() == b"trace\n"


def test_info_keeps_metadata_and_links(fs) -> None:
    truth = load_truth("seed.rootfs.umoci.jsonl")
    link = next(p for p, r in truth.items() if r["type"] == "symlink" and p.startswith("/app/"))
    info = fs.info(link)
    assert info["type"] == "link" and info["destination"] == truth[link]["linkname"]
    assert fs.info("/app")["type"] == "directory"
    assert fs.info("/etc/passwd")["size"] == truth["/etc/passwd"]["size"]


def test_reads_follow_symlinks_inside_the_image(fs) -> None:
    truth = load_truth("seed.rootfs.umoci.jsonl")
    link = next(p for p, r in truth.items() if r["type"] == "symlink" and p.startswith("/app/"))
    target = truth[link]["linkname"]
    target_path = target if target.startswith("/") else link.rsplit("/", 1)[0] + "/" + target
    assert fs.cat(link) == fs.cat(target_path)


def test_one_layer_and_ranges(tmp_path) -> None:
    fs = fsspec.filesystem("imgfs", fo=SEED, layer="trace.log", cache_dir=tmp_path)
    assert fs.ls("/app", detail=False) == ["/app/trace.log"]
    assert fs.cat_file("/app/trace.log", start=1, end=4) == b"rac"


def test_read_only_and_missing(fs) -> None:
    with pytest.raises(PermissionError):
        fs.open("/app/new", "wb")
    with pytest.raises(FileNotFoundError):
        fs.info("/no/such")
    with pytest.raises(FileNotFoundError):
        fs.cat("/no/such")


@pytest.mark.parametrize("start", [None, 0, 1, 4, 6, 9, -1, -4, -6, -9])
@pytest.mark.parametrize("end", [None, 0, 2, 5, 6, 9, -1, -3, -6, -9])
def test_cat_file_ranges_are_python_slices(fs, start, end) -> None:
    # fsspec: "start, end: bytes limits of the read; if negative, backwards from end, like usual python slices"
    assert fs.cat_file("/app/trace.log", start=start, end=end) == b"trace\n"[start:end]


def test_cat_file_of_a_directory_or_nothing(fs) -> None:
    with pytest.raises(IsADirectoryError):
        fs.cat_file("/app", start=-1)
    with pytest.raises(FileNotFoundError):
        fs.cat_file("/nope", end=-1)


def test_a_layer_that_matches_nothing_is_said_in_library_words(tmp_path) -> None:
    with pytest.raises(imgfs.SelectionError, match="^layer 'no such step' matches no layer"):
        fsspec.filesystem("imgfs", fo=SEED, layer="no such step", cache_dir=tmp_path, skip_instance_cache=True)
