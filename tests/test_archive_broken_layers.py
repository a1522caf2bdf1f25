"""Layers that cannot be read, or are cut short: never a stale merged view, and what is intact stays readable."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

import imgfs
from imgfs.errors import FormatError
from tarmaker import WH, ArchiveBuilder, F, config_for, digest_of, tar_of

LOWER = tar_of([F("etc/passwd", b"root:old\n"), F("etc/backdoor", b"evil\n")])
UPPER = tar_of([F("etc/passwd", b"root:new\n"), WH("etc/backdoor")])


def _cut_gzip_top(tmp_path: Path, cut: int) -> Path:
    """The top layer replaces /etc/passwd and deletes /etc/backdoor, but its gzip blob lacks `cut` bytes."""
    b = ArchiveBuilder()
    b.oci_index([b.oci_image([LOWER, UPPER], blobs=[LOWER, gzip.compress(UPPER)[:-cut]])])
    return Path(b.save(tmp_path / f"cut{cut}.tar"))


@pytest.mark.parametrize("cut", [4, 8, 30])
def test_an_unreadable_top_layer_makes_the_merged_view_fail_naming_it(tmp_path: Path, cut: int) -> None:
    warnings: list[str] = []
    with imgfs.open_archive(_cut_gzip_top(tmp_path, cut), use_cache=False, warn=warnings.append) as a:
        img = a.images[0]
        for _ in range(2):  # the second call too: the failure is not forgotten once reported
            with pytest.raises(FormatError, match=r"layer 2 \(blobs/sha256/[0-9a-f]+\) cannot be read.*stale"):
                img.merged()
        with pytest.raises(FormatError, match="layer 2"):
            img.layer_inputs()
        assert img.layer_tree(0).lookup("etc/backdoor") is not None  # the readable layer is still there
        with pytest.raises(FormatError, match="layer 2"):
            img.layer_tree(1)
        partial = img.merged(partial=True)  # asked for: the view without layer 2, and a warning says so
        assert b"".join(partial.read_all(partial.file("etc/passwd"))) == b"root:old\n"
        assert any(w.startswith("partial view: layer 2") for w in warnings), warnings


def _truncated(tmp_path: Path, cut_from_end: int) -> tuple[Path, bytes]:
    """A one-layer OCI archive, its documents first and its layer last, cut `cut_from_end` bytes short."""
    busybox = random.Random(1).randbytes(300_000)
    last = random.Random(2).randbytes(200_000)
    layer = tar_of([F("bin/busybox", busybox), F("etc/motd", b"hi\n"), F("z/last", last)])
    b = ArchiveBuilder()
    cfg = b.blob(config_for([layer]), "application/vnd.oci.image.config.v1+json")
    desc = {"digest": digest_of(layer), "size": len(layer), "mediaType": "application/vnd.oci.image.layer.v1.tar"}
    b.oci_index([b.blob({"schemaVersion": 2, "config": cfg, "layers": [desc]},
                        "application/vnd.oci.image.manifest.v1+json")])
    b.add("blobs/sha256/" + digest_of(layer).split(":")[1], layer)
    data = b.tar()
    path = tmp_path / "truncated.tar"
    path.write_bytes(data[:len(data) - 1024 - cut_from_end])  # 1024: the outer end-of-archive blocks
    return path, busybox


@pytest.mark.parametrize("cut", [95_000, 10_240, 200_700])  # inside z/last; inside the end blocks; in a header
def test_a_truncated_archive_keeps_the_members_before_the_cut(tmp_path: Path, cut: int) -> None:
    path, busybox = _truncated(tmp_path, cut)
    warnings: list[str] = []
    with imgfs.open_archive(path, use_cache=False, warn=warnings.append) as a:
        tree = a.images[0].merged()  # partially readable is not unreadable: nothing is hidden by a lost layer
        assert b"".join(tree.read_all(tree.file("bin/busybox"))) == busybox
        assert b"".join(tree.read_all(tree.file("etc/motd"))) == b"hi\n"
        last = tree.lookup("z/last")
        if last is not None and cut != 10_240:
            with pytest.raises(FormatError, match="cut off"):
                b"".join(tree.read_all(last))
    assert any("truncated" in w for w in warnings), warnings


def test_a_layer_damaged_part_way_is_not_merged_as_if_it_ended_there(tmp_path: Path) -> None:
    # A corrupt header after the new passwd: the whiteout of the backdoor behind it is lost, so the merged
    # view would show the backdoor. The layer's own tree keeps what lies before the damage.
    good = tar_of([F("etc/passwd", b"root:new\n")])
    damaged = good[:1024] + b"\xff" * 512 + tar_of([WH("etc/backdoor")])
    b = ArchiveBuilder()
    b.oci_index([b.oci_image([LOWER, damaged])])
    warnings: list[str] = []
    with imgfs.open_archive(b.save(tmp_path / "damaged.tar"), use_cache=False, warn=warnings.append) as a:
        img = a.images[0]
        with pytest.raises(FormatError, match=r"layer 2 .* is damaged after 1 entries: corrupt tar header.*stale"):
            img.merged()
        top = img.layer_tree(1)
        assert b"".join(top.read_all(top.file("etc/passwd"))) == b"root:new\n"
        partial = img.merged(partial=True)  # what can be read of it, and a warning that says so
        assert b"".join(partial.read_all(partial.file("etc/passwd"))) == b"root:new\n"
        assert any(w.startswith("partial view: layer 2") for w in warnings), warnings
