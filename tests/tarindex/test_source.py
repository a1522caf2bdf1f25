"""Byte sources: files, slices, and gzip/zstd streams (multi-member and multi-frame) served with pread."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from imgfs.errors import FormatError, ImgfsError, TruncatedError
from imgfs.tarindex import FileSource, SliceSource, Source, scan
from imgfs.tarindex.compressed import open_stream
from imgfs.tarindex.source import SpoolSource
from imgfs.tarindex.store import Store
from tarmaker import BytesSource, F, index_of, tar_of

PAYLOAD = random.Random(5).randbytes(300_000) + b"text " * 50_000  # incompressible part, then compressible


Opener = Callable[[bytes], tuple[Source, "str | None"]]


@pytest.fixture(params=["spool", "stream"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Both ways the engine serves compressed bytes: a private spool (no cache), and the cache's (cached zstd)."""
    if request.param == "spool":
        return lambda blob: open_stream(BytesSource(blob))
    store = Store(tmp_path / "cache")
    keys = iter(range(1000))
    return lambda blob: open_stream(BytesSource(blob), store, f"test:{next(keys)}")


def _read_all(opener: Opener, blob: bytes) -> tuple[bytes, str | None]:
    """All the uncompressed bytes an opener serves for `blob`, and the compression it found."""
    src, kind = opener(blob)
    return src.pread(0, src.size), kind


def _split_gzip(data: bytes, cuts: list[int]) -> bytes:
    """`data` as several concatenated gzip members (as pigz or `cat a.gz b.gz` make)."""
    bounds = [0, *cuts, len(data)]
    return b"".join(gzip.compress(data[a:b], mtime=0) for a, b in zip(bounds, bounds[1:], strict=False))


def _split_zstd(data: bytes, cuts: list[int]) -> bytes:
    """`data` as several concatenated zstd frames."""
    bounds = [0, *cuts, len(data)]
    c = zstandard.ZstdCompressor()
    return b"".join(c.compress(data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))


def test_plain_data_is_served_as_is(opener: Opener) -> None:
    src, kind = opener(PAYLOAD)
    assert kind is None and src.pread(0, src.size) == PAYLOAD


@pytest.mark.parametrize("cuts", [[], [1], [4096, 300_001], list(range(1000, 400_000, 37_000))],
                         ids=["one", "tiny-first", "two-cuts", "many"])
def test_multi_member_gzip_is_read_across_members(opener: Opener, cuts: list[int]) -> None:
    assert _read_all(opener, _split_gzip(PAYLOAD, cuts)) == (PAYLOAD, "gzip")


@pytest.mark.parametrize("cuts", [[], [5000], [1, 2, 3, 250_000]], ids=["one-frame", "two-frames", "many-frames"])
def test_zstd_frames_are_read_across(opener: Opener, cuts: list[int]) -> None:
    assert _read_all(opener, _split_zstd(PAYLOAD, cuts)) == (PAYLOAD, "zstd")


def test_gzip_member_split_inside_a_tar_header(opener: Opener) -> None:
    # A layer whose gzip members break in the middle of a header still scans like the plain tar.
    tar = tar_of([F(f"f{n}", bytes([n]) * (n * 100)) for n in range(20)])
    plain = index_of(tar)
    for blob in (_split_gzip(tar, [700, 5000]), _split_zstd(tar, [700, 5000])):
        src, _ = opener(blob)
        idx = scan(src)
        assert idx.names == plain.names and list(idx.offsets) == list(plain.offsets) and idx.error is None
        assert src.pread(idx.offsets[7], idx.sizes[7]) == bytes([7]) * 700


def test_gzip_with_a_little_zero_padding(opener: Opener) -> None:
    assert _read_all(opener, gzip.compress(PAYLOAD) + bytes(300))[0] == PAYLOAD


def test_gzip_with_zero_padding_past_a_read_chunk(opener: Opener) -> None:
    # Block devices and some tools pad a .gz with zeros; gzip(1) ignores trailing zeros wherever they end.
    assert _read_all(opener, gzip.compress(PAYLOAD) + bytes(2 << 20))[0] == PAYLOAD


@pytest.mark.parametrize("keep", [40, 0.5, 0.99], ids=["header-only", "half", "most"])
def test_truncated_gzip_is_an_error(opener: Opener, keep: float) -> None:
    blob = gzip.compress(PAYLOAD)
    with pytest.raises(ImgfsError):
        _read_all(opener, blob[: int(keep if keep > 1 else len(blob) * keep)])


_CUT_GZIP = """
import gzip, random, sys
from imgfs.errors import ImgfsError
from imgfs.tarindex.compressed import open_stream
from imgfs.tarindex.source import SpoolSource
from imgfs.tarindex.source import SliceSource, FileSource
payload = random.Random(5).randbytes(300_000) + b"text " * 50_000
blob = gzip.compress(payload)
path = sys.argv[2]
open(path, "wb").write(blob[: int(len(blob) * float(sys.argv[1]))])
src, _ = open_stream(FileSource(path))
try:
    src.pread(0, src.size)
    print("no error")
except ImgfsError as e:
    print("ImgfsError")
"""


@pytest.mark.parametrize("keep", ["0.5", "0.9", "0.99"])  # 0.99 made rapidgzip abort the interpreter (fixed)
def test_truncated_gzip_stream_does_not_kill_the_process(tmp_path: Path, keep: str) -> None:
    # In a child process: the failure mode is the whole process dying, which would take pytest with it.
    proc = subprocess.run([sys.executable, "-c", _CUT_GZIP, keep, str(tmp_path / "cut.gz")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.strip() == "ImgfsError"


@pytest.mark.parametrize("keep", [0.5, 0.99], ids=["half", "most"])
def test_truncated_zstd_is_an_error(opener: Opener, keep: float) -> None:
    blob = zstandard.ZstdCompressor().compress(PAYLOAD)
    with pytest.raises(ImgfsError):
        _read_all(opener, blob[: int(len(blob) * keep)])


def test_truncated_small_zstd_layer_is_reported(opener: Opener) -> None:
    blob = zstandard.ZstdCompressor().compress(tar_of([F("a", b"x")]))[:-4]
    try:
        src, _ = opener(blob)
        idx = scan(src)
    except ImgfsError:
        return
    assert idx.error, f"silently read {idx.names} from a cut zstd stream"


@pytest.mark.parametrize("blob", [gzip.compress(PAYLOAD) + b"trailing garbage", b"\x1f\x8b" + b"\x00" * 50,
                                  zstandard.ZstdCompressor().compress(PAYLOAD) + b"garbage!"],
                         ids=["gzip-garbage", "gzip-bad-header", "zstd-garbage"])
def test_corrupt_compressed_data_is_a_format_error(opener: Opener, blob: bytes) -> None:
    with pytest.raises(FormatError):
        _read_all(opener, blob)


@pytest.mark.parametrize("blob", [bz2.compress(b"x" * 100), lzma.compress(b"x" * 100)], ids=["bzip2", "xz"])
def test_unsupported_compression_is_named(opener: Opener, blob: bytes) -> None:
    with pytest.raises(FormatError, match="bzip2/xz"):
        opener(blob)


def test_empty_and_tiny_sources(opener: Opener) -> None:
    for data in (b"", b"\x1f", b"ab"):
        src, kind = opener(data)
        assert kind is None and src.size == len(data)


def test_slice_source_composes_and_bounds() -> None:
    base = BytesSource(bytes(range(256)) * 4)
    outer = SliceSource(base, 100, 500)
    inner = SliceSource(outer, 50, 20)
    assert inner.pread(0, 20) == base.pread(150, 20)
    assert inner.pread(19, 1) == bytes([169 % 256])
    for off, n in ((0, 21), (20, 1), (-1, 1), (19, 2)):
        with pytest.raises(TruncatedError):
            inner.pread(off, n)


def test_file_source_reads_and_notices_shrinking(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    src = FileSource(path)
    try:
        assert src.size == len(PAYLOAD)
        assert src.pread(123_456, 1000) == PAYLOAD[123_456:124_456]
        with open(path, "r+b") as fh:
            fh.truncate(1000)
        with pytest.raises(TruncatedError):
            src.pread(500, 1000)
    finally:
        src.close()


def test_file_source_missing_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError):
        FileSource(tmp_path / "absent")


def test_spool_leaves_no_temporary_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    src = SpoolSource(BytesSource(gzip.compress(PAYLOAD)), "gzip", spool_dir=str(spool))
    assert src.pread(0, 10) == PAYLOAD[:10]
    assert os.listdir(spool) == []  # unlinked at once: nothing to clean up after a crash
    src.close()  # type: ignore[attr-defined]
