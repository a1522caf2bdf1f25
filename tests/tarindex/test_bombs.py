"""Decompression bombs: a gzip or zstd layer that expands without bound is refused, not spooled to the end."""

from __future__ import annotations

import gzip

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
