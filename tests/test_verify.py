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
        member = a.blobs.member(top.member)
        # Flip a byte inside the top layer blob's last 512-byte block of data (tar padding or gzip trailer).
        at = a.blobs.index.offsets[member] + a.blobs.index.sizes[member] - 5
    with open(copy, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0xFF]))
    with imgfs.open_archive(copy, use_cache=False) as a:
        bad = [c for c in verify_image(a.image()) if not c.ok]
    assert bad, "the flipped byte went unnoticed"
    assert all(c.what.startswith(f"layer {len(img.layers)}") for c in bad), [c.what for c in bad]


def test_layers_are_shared_between_archives_once_their_headers_match(tmp_path, monkeypatch) -> None:
    first, second = tmp_path / "first.tar", tmp_path / "second.tar"
    shutil.copy(IMAGES / "seed.docker-oci.tar", first)
    shutil.copy(IMAGES / "seed.docker-oci.tar", second)
    cache = tmp_path / "cache"
    with imgfs.open_archive(first, cache_dir=cache) as a:
        want = {la.diff_id: list(la.index().names) for la in a.image().layers}
        assert all(la.index().meta_digest for la in a.image().layers)

    import imgfs.archive as archive_module

    scans: list[object] = []
    real_scan = archive_module.scan
    monkeypatch.setattr(archive_module, "scan", lambda *a, **k: scans.append(a) or real_scan(*a, **k))
    with imgfs.open_archive(second, cache_dir=cache) as b:
        got = {la.diff_id: list(la.index().names) for la in b.image().layers}
    assert not scans and got == want  # no layer was scanned (the outer tar is the store's): every layer came shared
    import imgfs.tarindex.trust as trust

    checks: list[object] = []
    real_check = trust.meta_digest
    monkeypatch.setattr(trust, "meta_digest", lambda *a: checks.append(a) or real_check(*a))
    with imgfs.open_archive(second, cache_dir=cache) as b:  # again: its pointers say which digest it matched
        assert {la.diff_id: list(la.index().names) for la in b.image().layers} == want
    assert checks == [] and not scans

    with imgfs.open_archive(first, cache_dir=cache) as a:  # hashing the layers changes nothing of the sharing
        assert all(c.ok for c in verify_image(a.image()))
    scans.clear()
    third = tmp_path / "third.tar"
    shutil.copy(IMAGES / "seed.docker-oci.tar", third)
    with imgfs.open_archive(third, cache_dir=cache) as c:
        got = {la.diff_id: list(la.index().names) for la in c.image().layers}
    assert not scans and got == want
