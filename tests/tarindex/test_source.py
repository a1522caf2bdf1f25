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
from imgfs.tarindex.source import SpoolSource, check_source, close_source, local_file, rereads_cheaply
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
from imgfs.tarindex.source import SpoolSource, check_source, close_source, local_file, rereads_cheaply
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


class _Bare:
    """A source with only what the protocol requires: size and pread (a new kind of source starts so)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise TruncatedError("past the end")
        return self.data[offset:offset + length]


def test_the_optional_capabilities_have_defaults_for_a_bare_source() -> None:
    tar = tar_of([F("a", b"x" * 700), F("b", b"y")])
    bare = _Bare(tar)
    assert local_file(bare) is None and rereads_cheaply(bare)
    check_source(bare)  # cannot tell: a no-op
    close_source(bare)  # nothing to close: a no-op
    assert scan(bare).names == index_of(tar).names
    inner = SliceSource(SliceSource(bare, 10, 100), 5, 20)
    assert local_file(inner) is None and rereads_cheaply(inner)


def test_local_file_walks_down_nested_slices_once(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    f = FileSource(path)
    try:
        inner = SliceSource(SliceSource(f, 1000, 50_000), 300, 2000)
        assert local_file(inner) == (f, 1300) and local_file(f) == (f, 0)
        plain, _ = open_stream(SliceSource(f, 0, f.size))
        assert local_file(plain) == (f, 0)  # not compressed: the file itself
        gz, _ = open_stream(BytesSource(gzip.compress(PAYLOAD)))
        assert local_file(gz) is None and not rereads_cheaply(gz)  # its bytes are not a file's: decompressed
    finally:
        f.close()


@pytest.mark.parametrize("change", ["rewrite-same-size-mtime-restored", "truncate", "append"])
def test_a_file_changed_in_place_is_noticed_by_its_source(tmp_path: Path, change: str) -> None:
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    src = FileSource(path)
    try:
        first = src.identity
        assert src.pread(0, 10) == PAYLOAD[:10]
        st = path.stat()
        with open(path, "r+b") as fh:
            if change == "truncate":
                fh.truncate(len(PAYLOAD) - 1)
            elif change == "append":
                fh.seek(0, 2)
                fh.write(b"more")
            else:
                fh.write(b"X" * 10)
        if change.startswith("rewrite"):
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p and rsync -t leave it
        with pytest.raises(ImgfsError, match="changed since it was opened"):
            src.check()
        with pytest.raises(ImgfsError, match="changed since it was opened"):
            src.pread(100, 10)
        again = FileSource(path)
        assert again.identity != first  # a cache key made from it names another file
        again.close()
    finally:
        src.close()


def test_a_deleted_or_renamed_over_file_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    src = FileSource(path)
    try:
        (tmp_path / "other").write_bytes(b"other")
        os.replace(tmp_path / "other", path)  # the opened file loses its name: its bytes stay as they were
        src.check()
        assert src.pread(5, 10) == PAYLOAD[5:15]
    finally:
        src.close()


@pytest.mark.parametrize("first", [3 << 20, (1 << 20) - 1, 1 << 20, (1 << 20) + 1])
def test_gzip_members_whose_output_exceeds_a_call_are_read_once(opener: Opener, first: int) -> None:
    # Decompression returns at most 1 MiB a call: a member ending just after such a call must hand the
    # next member's bytes on once, not twice.
    a = random.Random(first).randbytes(first // 2) + bytes(first - first // 2)
    b = b"the next member" * 1000
    assert _read_all(opener, gzip.compress(a) + gzip.compress(b) + gzip.compress(a)) == (a + b + a, "gzip")
