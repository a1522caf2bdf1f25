"""Large gzip streams: seek points made by a child process, persisted, reused; damage fails one stream only."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from imgfs.errors import ImgfsError
from imgfs.tarindex import FileSource, SliceSource
from imgfs.tarindex.compressed import SMALL_GZIP, GzipSource, open_stream
from imgfs.tarindex.store import Store

RNG = random.Random(7)
# Half incompressible, half text: well over the small-stream threshold once compressed.
PAYLOAD = RNG.randbytes(SMALL_GZIP + (1 << 20)) + b"imgfs seek point test line\n" * 400_000


@pytest.fixture(scope="module")
def big_gz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gz") / "big.bin"
    # Put the stream inside a larger file, as a layer blob sits inside an archive.
    path.write_bytes(b"H" * 1000 + gzip.compress(PAYLOAD, compresslevel=1) + b"T" * 777)
    return path


def _slice(path: Path) -> SliceSource:
    f = FileSource(path)
    return SliceSource(f, 1000, f.size - 1000 - 777)


def test_random_reads_match_and_points_are_persisted(big_gz: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    src, kind = open_stream(_slice(big_gz), store, "sha256:" + "ab" * 32)
    assert kind == "gzip" and isinstance(src, GzipSource)
    assert src.size == len(PAYLOAD)
    for off in (0, 12345, len(PAYLOAD) // 2, len(PAYLOAD) - 4096):
        assert src.pread(off, 4096) == PAYLOAD[off:off + 4096]
    assert src._fallback is None, "a large stream in a file must use seek points"
    points = list((tmp_path / "cache").rglob("*.gzi"))
    assert len(points) == 1 and points[0].stat().st_size > 16
    src.close()

    # A second open takes the points from the cache: no first pass (a child would not be needed).
    again = GzipSource(_slice(big_gz), store, "sha256:" + "ab" * 32)
    again._first_pass = None  # type: ignore[assignment]  # any call would now fail loudly
    assert again.size == len(PAYLOAD) and again._file is None  # the size alone loads no decompressor
    off = len(PAYLOAD) - 100_000
    assert again.pread(off, 1000) == PAYLOAD[off:off + 1000]
    again.close()


def test_garbage_points_in_the_cache_are_rebuilt(big_gz: Path, tmp_path: Path) -> None:
    warnings: list[str] = []
    store = Store(tmp_path / "cache", warn=warnings.append)
    key = "sha256:" + "cd" * 32
    store.write("gz", key, ".gzi", b"%016d" % len(PAYLOAD) + b"not seek points")
    src = GzipSource(_slice(big_gz), store, key)
    assert src.pread(len(PAYLOAD) - 10, 10) == PAYLOAD[-10:]
    assert any("rebuilding" in w for w in warnings)
    src.close()


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_large_stream_is_an_error_not_a_crash(big_gz: Path, tmp_path: Path, keep: float) -> None:
    data = big_gz.read_bytes()[1000:-777]
    cut = tmp_path / "cut.gz"
    cut.write_bytes(data[: int(len(data) * keep)])
    src = GzipSource(FileSource(cut), Store(tmp_path / "cache"), "test:cut")
    with pytest.raises(ImgfsError):
        src.pread(0, src.size)
    src.close()


def test_archive_shrinking_under_a_reader_is_an_error(big_gz: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.bin"
    copy.write_bytes(big_gz.read_bytes())
    f = FileSource(copy)
    src = GzipSource(SliceSource(f, 1000, f.size - 1000 - 777), None, None)
    assert src.pread(0, 10) == PAYLOAD[:10]
    with open(copy, "r+b") as fh:
        fh.truncate(f.size // 2)
    with pytest.raises(ImgfsError):
        src.pread(len(PAYLOAD) - 10, 10)
    src.close()


def test_a_byte_flipped_in_place_under_a_reader_is_an_error_not_other_bytes(big_gz: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.bin"
    copy.write_bytes(big_gz.read_bytes())
    src = GzipSource(_slice(copy), Store(tmp_path / "cache"), "test:flip")
    assert src.pread(0, 10) == PAYLOAD[:10]
    assert src._fallback is None
    at = 1000 + (5 << 20)  # level 1 stores random bytes as they are: this is about payload byte 5 MiB
    with open(copy, "r+b") as fh:
        fh.seek(at)
        old = fh.read(1)
        fh.seek(at)
        fh.write(bytes([old[0] ^ 0xFF]))
    for off in (5 << 20, 0):
        with pytest.raises(ImgfsError, match="changed"):
            src.pread(off - 2048 if off else 0, 4096)
    src.close()


def test_damaged_seek_points_are_rebuilt_never_trusted(big_gz: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "cache", warn=(warnings := []).append)
    key = "sha256:" + "ef" * 32
    src = GzipSource(_slice(big_gz), store, key)
    assert src.pread(len(PAYLOAD) // 2, 100) == PAYLOAD[len(PAYLOAD) // 2:len(PAYLOAD) // 2 + 100]
    src.close()
    (points,) = (tmp_path / "cache").rglob("*.gzi")
    data = bytearray(points.read_bytes())
    data[len(data) // 2] ^= 0x04  # inside a seek point's window: rapidgzip would decompress other bytes from it
    points.write_bytes(bytes(data))
    again = GzipSource(_slice(big_gz), store, key)
    for off in (len(PAYLOAD) // 2, len(PAYLOAD) - 5000, 3 << 20):
        assert again.pread(off, 5000) == PAYLOAD[off:off + 5000]
    assert len(warnings) == 1 and "rebuilding" in warnings[0]
    again.close()
