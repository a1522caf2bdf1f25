"""imgfs.verify: every fixture checks out; a flipped byte is caught in the right layer."""

from __future__ import annotations

import shutil

import pytest

import imgfs
from conftest import IMAGES, archives
from imgfs.verify import verify_image


@pytest.mark.parametrize("name", archives())
def test_fixture_digests_all_match(name: str, tmp_path) -> None:
    with imgfs.open_archive(IMAGES / name, cache_dir=tmp_path) as a:
        for img in a.images:
            checks = verify_image(img)
            assert checks, "nothing was checked"
            assert [c.what for c in checks if not c.ok] == []
            assert sum("diff_id" in c.what for c in checks) == len(img.layers)


@pytest.mark.parametrize("name", ["seed.docker-oci.tar", "seed.docker-legacy.tar", "seed.skopeo-oci-gzip.tar"])
def test_flipped_byte_is_reported_for_its_layer(name: str, tmp_path) -> None:
    copy = tmp_path / name
    shutil.copy(IMAGES / name, copy)
    with imgfs.open_archive(copy, use_cache=False) as a:
        img = a.image()
        top = img.layers[-1]
        member = a.reader.member(top.member)
        # Flip a byte inside the top layer blob's last 512-byte block of data (tar padding or gzip trailer).
        at = a.index.offsets[member] + a.index.sizes[member] - 5
    with open(copy, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0xFF]))
    with imgfs.open_archive(copy, use_cache=False) as a:
        bad = [c for c in verify_image(a.image()) if not c.ok]
    assert bad, "the flipped byte went unnoticed"
    assert all(c.what.startswith(f"layer {len(img.layers)}") for c in bad), [c.what for c in bad]
