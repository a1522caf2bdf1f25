"""Compressed layers: the zstd spool checks itself, a small cache disk is no bomb, few descriptors are enough."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

import imgfs
from conftest import IMAGES
from imgfs.tarindex.compressed import SPOOL_BLOCK, CheckedSpool, SpoolDamaged, _SpoolWriter
from tarmaker import ArchiveBuilder, F, tar_of
from truthlib import listing_from_tree

ZSTD = IMAGES / "seed.skopeo-oci-zstd.tar"


def _listing(path: Path, **kw: object) -> dict:
    with imgfs.open_archive(path, **kw) as a:
        return listing_from_tree(a.image().merged())


@pytest.fixture(scope="module")
def want() -> dict:
    return _listing(ZSTD, use_cache=False)


def _spools(cache: Path) -> list[Path]:
    spools = sorted((cache / "v1" / "zst").glob("*.tar"), key=lambda p: p.stat().st_size)
    assert spools, "zstd layers are decompressed into the cache"
    return spools


def test_a_flipped_bit_in_a_zstd_spool_is_caught_and_the_spool_made_again(tmp_path: Path, want: dict) -> None:
    cache = tmp_path / "cache"
    assert _listing(ZSTD, cache_dir=cache) == want
    for spool in _spools(cache):
        data = bytearray(spool.read_bytes())
        data[min(len(data) // 3, 3 * SPOOL_BLOCK + 7)] ^= 0x10  # inside the data, not the table of checksums
        spool.write_bytes(bytes(data))
    warnings: list[str] = []
    assert _listing(ZSTD, cache_dir=cache, warn=warnings.append) == want
    assert warnings and all("damaged; rebuilding" in w for w in warnings)
    warnings.clear()
    assert _listing(ZSTD, cache_dir=cache, warn=warnings.append) == want
    assert warnings == []


@pytest.mark.parametrize("cut", ["empty", "half", "trailer"])
def test_a_cut_zstd_spool_never_makes_the_image_look_empty(tmp_path: Path, want: dict, cut: str) -> None:
    cache = tmp_path / "cache"
    assert _listing(ZSTD, cache_dir=cache) == want
    for spool in _spools(cache):
        size = spool.stat().st_size
        os.truncate(spool, {"empty": 0, "half": size // 2, "trailer": size - 4}[cut])
    warnings: list[str] = []
    assert _listing(ZSTD, cache_dir=cache, warn=warnings.append) == want
    assert warnings and all("rebuilding" in w for w in warnings)


def _zstd_archive(path: Path, layers: list[bytes]) -> Path:
    b = ArchiveBuilder()
    b.oci_index([b.oci_image(layers, blobs=[zstandard.ZstdCompressor(level=1).compress(la) for la in layers])])
    return Path(b.save(path))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB filesystem of its own (tmpfs), unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_cache_disk_too_small_for_a_layer_is_no_bomb(tmp_path: Path, small_disk: Path) -> None:
    # 32 MiB that compress about 3:1: far from a bomb, but more than the small disk holds.
    rng = random.Random(11)
    body = b"".join(rng.randbytes(1024) + bytes(2048) for _ in range(32 * 1024 // 3))
    archive = _zstd_archive(tmp_path / "a.tar", [tar_of([F("big.bin", body), F("etc/hello", b"hi\n")])])
    warnings: list[str] = []
    with imgfs.open_archive(archive, cache_dir=small_disk / "cache", warn=warnings.append) as a:
        tree = a.image().merged()
        ref = tree.file("big.bin")
        assert tree.read(ref, len(body) - 4096, 4096) == body[-4096:]
    assert len(warnings) == 1 and "no room" in warnings[0] and "private copy" in warnings[0]
    assert list((small_disk / "cache").rglob(".tmp-*")) == []  # the abandoned copy is gone


_FEW_FDS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
from imgfs.cli import main
sys.exit(main(["--cache-dir", sys.argv[2], "ls", sys.argv[1], "/"]))
"""


@pytest.mark.parametrize("run", ["cold", "warm"])
def test_forty_compressed_layers_read_with_32_descriptors(tmp_path: Path, run: str) -> None:
    layers = [tar_of([F(f"l{n}/file", b"layer %d\n" % n)]) for n in range(40)]
    b = ArchiveBuilder()
    blobs = [zstandard.ZstdCompressor().compress(la) if n % 2 else gzip.compress(la) for n, la in enumerate(layers)]
    b.oci_index([b.oci_image(layers, blobs=blobs)])
    archive = b.save(tmp_path / "forty.tar")
    cache = tmp_path / "cache"
    for _ in range(1 if run == "cold" else 2):
        proc = subprocess.run([sys.executable, "-c", _FEW_FDS, archive, str(cache)], capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == sorted(f"l{n}" for n in range(40))
    assert "corrupt" not in proc.stderr and "Too many" not in proc.stderr
    shutil.rmtree(cache)


def test_a_checked_spool_serves_any_range_and_refuses_any_damaged_block(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(5 * SPOOL_BLOCK + 1234)
    path = tmp_path / "spool"
    with open(path, "wb") as fh:
        w = _SpoolWriter(fh)
        for at in range(0, len(data), 7777):  # writes that never line up with blocks
            w.write(data[at:at + 7777])
        w.finish()
    spool = CheckedSpool(os.open(path, os.O_RDONLY), str(path))
    rng = random.Random(3)
    cases = [(0, len(data)), (0, 1), (len(data) - 1, 1), (SPOOL_BLOCK - 1, 2), (SPOOL_BLOCK, SPOOL_BLOCK)]
    cases += [(o, rng.randrange(0, len(data) - o + 1)) for o in (rng.randrange(len(data)) for _ in range(200))]
    for off, n in cases:
        assert spool.pread(off, n) == data[off:off + n], (off, n)
    spool.close()
    raw = bytearray(path.read_bytes())
    raw[3 * SPOOL_BLOCK + 5] ^= 0x80
    path.write_bytes(bytes(raw))
    spool = CheckedSpool(os.open(path, os.O_RDONLY), str(path))
    assert spool.pread(0, 3 * SPOOL_BLOCK) == data[:3 * SPOOL_BLOCK]  # the blocks before are whole
    for off, n in ((3 * SPOOL_BLOCK + 5, 1), (3 * SPOOL_BLOCK - 1, 2), (4 * SPOOL_BLOCK - 1, 1), (0, len(data))):
        with pytest.raises(SpoolDamaged):
            spool.pread(off, n)
    spool.close()
