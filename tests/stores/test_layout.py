"""The directory store: blobs read in place, nothing outside the directory ever opened, indexes cached and shared."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import imgfs
import imgfs.archive
from conftest import IMAGES
from imgfs.errors import FormatError
from imgfs.stores import open_store
from layouts import oci_layout, unpacked
from tarmaker import ArchiveBuilder, F, tar_of

LOWER = tar_of([F("etc/lower", b"lower")])
UPPER = tar_of([F("etc/upper", b"upper")])


def legacy_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    """An unpacked legacy docker save of two layers; the layer paths manifest.json names."""
    b = ArchiveBuilder()
    entry = b.docker_image([LOWER, UPPER], ["app:1"])
    b.add("manifest.json", [entry])
    return unpacked(Path(b.save(tmp_path / "app.tar")), tmp_path / "app"), entry["Layers"]


def files(img: imgfs.Image, partial: bool = False) -> dict[str, bytes]:
    tree = img.merged(partial=partial)
    return {p.decode(): b"".join(tree.read_all(r)) for p, r in tree.walk() if tree.entry_for(p, r).kind == "file"}


def test_an_unpacked_save_reads_in_place_and_a_symlink_inside_is_followed(tmp_path: Path) -> None:
    place, layers = legacy_dir(tmp_path)
    dup = place / layers[1]
    shutil.copy(dup, place / "upper.tar")
    dup.unlink()
    dup.symlink_to("../upper.tar")  # as docker save links duplicate layers
    with imgfs.open_archive(place, use_cache=False) as a:
        assert files(a.image()) == {"etc/lower": b"lower", "etc/upper": b"upper"}
        assert a.blobs.origin(layers[1]).startswith(f"file:{place / 'upper.tar'}:")


@pytest.mark.parametrize("how", ["relative, climbing out", "absolute", "a directory link out"])
def test_a_symlink_out_of_the_directory_leads_nowhere(tmp_path: Path, how: str) -> None:
    place, layers = legacy_dir(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = place / layers[1]
    (outside / "layer.tar").write_bytes(victim.read_bytes())  # the very bytes: a follow would read them right
    if how == "a directory link out":
        shutil.rmtree(victim.parent)
        victim.parent.symlink_to(outside)
    else:
        victim.unlink()
        victim.symlink_to("../../outside/layer.tar" if how.startswith("relative") else outside / "layer.tar")
    warnings: list[str] = []
    with imgfs.open_archive(place, use_cache=False, warn=warnings.append) as a:
        assert not a.blobs.exists(layers[1])
        with pytest.raises(FormatError, match="missing from the directory"):
            a.blobs.open(layers[1])
        with pytest.raises(FormatError, match="cannot be read"):  # never the lower layer's stale view
            files(a.image())
        assert files(a.image(), partial=True) == {"etc/lower": b"lower"}
    assert any("missing" in w for w in warnings), warnings


def test_a_fifo_where_a_blob_should_be_is_missing_not_a_hang(tmp_path: Path) -> None:
    place, layers = legacy_dir(tmp_path)
    (place / layers[0]).unlink()
    os.mkfifo(place / layers[0])
    store = open_store(str(place))  # a FIFO opened for reading would wait for a writer: it must not be opened so
    try:
        assert not store.exists(layers[0]) and store.exists(layers[1])
    finally:
        store.close()


def test_origin_names_the_blob_file_itself_and_changes_with_it(tmp_path: Path) -> None:
    place, layers = legacy_dir(tmp_path)
    store = open_store(str(place))
    try:
        before = store.origin(layers[0])
        st = os.stat(place / layers[0])
        assert before.startswith(f"file:{place / layers[0]}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:"
                                 f"{st.st_ctime_ns}:")  # then a hash of its first and last blocks
    finally:
        store.close()
    os.utime(place / layers[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    store = open_store(str(place))
    try:
        assert store.origin(layers[0]) != before
    finally:
        store.close()


def test_indexes_are_cached_and_shared_with_the_tarball_of_the_same_layers(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    archive = IMAGES / "seed.docker-oci.tar"
    place = unpacked(archive, tmp_path / "seed")
    cache = tmp_path / "cache"
    with imgfs.open_archive(archive, cache_dir=cache) as a:
        want = files(a.image())

    def no_scan(*args: object, **kw: object) -> None:
        raise AssertionError("a layer was scanned again")

    monkeypatch.setattr(imgfs.archive, "scan", no_scan)
    for _ in range(2):  # first through the indexes the tarball left under each diff_id, then through its own
        with imgfs.open_archive(place, cache_dir=cache) as a:
            assert files(a.image()) == want


def test_oci_dir_ref_picks_the_image_of_that_ref(tmp_path: Path) -> None:
    layout = oci_layout(IMAGES / "seed.skopeo-oci-gzip.tar", tmp_path / "oci", "one")
    oci_layout(IMAGES / "whiteout.skopeo-oci-gzip.tar", layout, "two")
    with imgfs.open_archive(f"oci:{layout}:two", use_cache=False) as a:
        assert len(a.images) == 2 and a.image().refs == ["two"]
    with imgfs.open_archive(f"oci:{layout}", use_cache=False) as a, pytest.raises(imgfs.SelectionError):
        a.image()
