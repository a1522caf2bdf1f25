"""The index cache's trust rules: a cached index is used only where it is whole and fits; else rebuilt, one warning."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

import imgfs
from imgfs.tarindex.store import load_index
from tarmaker import END, ArchiveBuilder, F, header, pad, tar_of

# Ten files of one block each: member n's data lies 1024 bytes after member n-1's, so one flipped bit (1024)
# in an offset points exactly at a neighbour's bytes.
FILES = [F(f"f{n}", bytes([65 + n]) * 512) for n in range(10)]


def _archive(path: Path, layer: bytes, compress: bool) -> Path:
    b = ArchiveBuilder()
    b.oci_index([b.oci_image([layer], blobs=[gzip.compress(layer, mtime=0)] if compress else None)])
    return Path(b.save(path))


def _read(path: Path, name: str, **kw: object) -> bytes:
    with imgfs.open_archive(path, **kw) as a:
        tree = a.image().merged()
        ref = tree.file(name)
        return tree.read(ref, 0, 512)


def _flip_offset_bit(index_file: Path, member: int) -> None:
    """Flip bit 10 of one member's offset in a cached index file, in place."""
    data = index_file.read_bytes()
    start = data.index(b"IMGFSIX")
    idx, _ = load_index(data[start:])
    value = idx.offsets[member]
    packed = struct.pack("<" + idx.offsets.typecode, value)
    assert data.count(packed) == 1
    at = data.index(packed)
    flipped = struct.pack("<" + idx.offsets.typecode, value ^ 1024)
    index_file.write_bytes(data[:at] + flipped + data[at + len(packed):])


@pytest.mark.parametrize("compress", [False, True], ids=["shared-by-pointer", "gzip-own-index"])
def test_a_flipped_bit_in_a_cached_index_never_serves_another_members_bytes(tmp_path: Path, compress: bool) -> None:
    archive = _archive(tmp_path / "a.tar", tar_of(FILES), compress)
    cache = tmp_path / "cache"
    assert _read(archive, "f5", cache_dir=cache) == b"F" * 512
    assert _read(archive, "f5", cache_dir=cache) == b"F" * 512  # now through the pointer (or the own index)
    (index_file,) = (cache / "v1").glob("idx/*.idx") if compress else (cache / "v1").glob("shared/*.idx")
    _flip_offset_bit(index_file, 5)
    warnings: list[str] = []
    assert _read(archive, "f5", cache_dir=cache, warn=warnings.append) == b"F" * 512
    assert len(warnings) == 1 and "rebuilding" in warnings[0]
    warnings.clear()
    assert _read(archive, "f5", cache_dir=cache, warn=warnings.append) == b"F" * 512
    assert warnings == []  # rebuilt whole


def test_an_old_style_signed_checksum_is_trusted_from_the_cache_like_from_the_scan(tmp_path: Path) -> None:
    block = header(b"caf\xe9\xff", size=3)
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + b" " * 8 + block[156:])
    # The skipped member leaves the scan no digest to share the index by: it is kept as this blob's own,
    # and the spot check of its headers decides.
    layer = header(b"caf\xe9\xff", size=3, checksum=signed) + pad(b"abc") + header(b"../climbs-out") + END
    archive = _archive(tmp_path / "a.tar", layer, compress=False)
    cache = tmp_path / "cache"
    warnings: list[str] = []
    for _ in range(3):
        assert _read(archive, "caf\xe9\xff".encode("latin-1").decode("utf-8", "surrogateescape"), cache_dir=cache,
                     warn=warnings.append)[:3] == b"abc"
    assert not [w for w in warnings if "cache" in w]  # the skipped member is named; the index is never rebuilt
