"""Decompression bombs: a gzip or zstd layer that expands without bound is refused, not spooled to the end."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import zstandard

import imgfs.tarindex.source as source
from imgfs.errors import ImgfsError
from imgfs.tarindex.compressed import open_stream
from imgfs.tarindex.store import Store
from tarmaker import BytesSource

ZEROS = bytes(64 << 20)  # 64 MiB of zeros: ~64 KiB as gzip, ~2 KiB as zstd


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real floor is 4 GiB; a bomb that big is too slow for CI, so shrink the floor, keep the ratio.
    monkeypatch.setattr(source, "BOMB_FLOOR", 1 << 20)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_bomb_is_refused_with_a_clear_error(small_limits: None, tmp_path, kind: str) -> None:
    blob = gzip.compress(ZEROS, compresslevel=9) if kind == "gzip" else zstandard.ZstdCompressor().compress(ZEROS)
    assert len(ZEROS) > source.BOMB_RATIO * len(blob)  # it is a bomb by the rule
    for src, _ in (open_stream(BytesSource(blob)), open_stream(BytesSource(blob), Store(tmp_path), "k")):
        with pytest.raises(ImgfsError, match="decompression bomb"):
            src.pread(0, 1)
    assert list(tmp_path.rglob("*.tar")) == [] and list(tmp_path.rglob(".tmp-*")) == []


def test_an_ordinary_compression_ratio_is_fine(small_limits: None) -> None:
    data = bytes(range(256)) * 40_000  # compresses well, but far below the ratio
    blob = gzip.compress(data)
    src, kind = open_stream(BytesSource(blob))
    assert kind == "gzip" and src.pread(0, src.size) == data


_IN_A_SMALL_PROCESS = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (160 << 20, 160 << 20))  # a decompressed whole would never fit
import imgfs.tarindex.source as source
source.BOMB_FLOOR, source.BOMB_RATIO = 32 << 20, 16  # the real floor (4 GiB) is too slow for CI; the rule is kept
from imgfs.errors import ImgfsError
from imgfs.tarindex.compressed import open_stream
from imgfs.tarindex.source import FileSource
src, _ = open_stream(FileSource(sys.argv[1]))
t = time.monotonic()
try:
    src.pread(0, 1)
    print("served")
except ImgfsError as e:
    print("refused", e)
peak = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]  # kB; ru_maxrss outlives exec
print(int(peak) >> 10, time.monotonic() - t)
"""


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """256 MiB of zeros: one gzip member; one zstd frame with its size declared, one without."""
    where = tmp_path_factory.mktemp("bombs")
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    zeros = bytes(64 << 20)
    blobs = {"gzip": b"".join([c.compress(zeros) for _ in range(4)] + [c.flush()]),
             "zstd-declared": zstandard.ZstdCompressor().compress(zeros * 4),
             "zstd-streamed": zstandard.ZstdCompressor(write_content_size=False).compress(zeros * 4)}
    paths = {}
    for name, blob in blobs.items():
        paths[name] = where / name
        paths[name].write_bytes(blob)
    return paths


@pytest.mark.parametrize("kind", ["gzip", "zstd-declared", "zstd-streamed"])
def test_a_bomb_is_refused_in_bounded_memory_and_time(bombs: dict[str, Path], kind: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _IN_A_SMALL_PROCESS, str(bombs[kind])], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    verdict, usage = proc.stdout.splitlines()
    assert verdict.startswith("refused") and "decompression bomb" in verdict
    peak_mib, seconds = usage.split()
    assert int(peak_mib) < 120 and float(seconds) < 20, usage
