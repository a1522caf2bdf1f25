"""docker:// references against a real Distribution registry on 127.0.0.1: the same listings as the tarballs,
through the CLI, extract and the mount; lazy in bytes; manifests of every kind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import imgfs
from clihelp import assert_one_line_error, run
from conftest import truth_index
from imgfs.errors import UsageError
from imgfs.stores.reference import parse
from tarmaker import F, config_for, tar_of
from truthlib import diff, image_truth, listing_from_dir, listing_from_tree, load_truth, portable


def _fixtures() -> list[str]:
    return sorted(n for n, e in truth_index().items() if len(e["images"]) == 1 and not n.endswith(".gz"))


# -- references ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "host", "repo", "selector"), [
    ("app:1.0", "docker.io", "library/app", "1.0"),
    ("app", "docker.io", "library/app", "latest"),
    ("user/app", "docker.io", "user/app", "latest"),
    ("quay.io/org/app:v2", "quay.io", "org/app", "v2"),
    ("localhost/app", "localhost", "app", "latest"),
    ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t"),
    ("reg:5000/app@sha256:" + "ab" * 32, "reg:5000", "app", "sha256:" + "ab" * 32),
])
def test_references_are_read_as_docker_reads_them(text: str, host: str, repo: str, selector: str) -> None:
    ref = parse(text)
    assert (ref.host, ref.repo, ref.selector) == (host, repo, selector)
    assert ref.api_host == ("registry-1.docker.io" if host == "docker.io" else host)


@pytest.mark.parametrize("text", ["", "App:1", "app:", "app@sha256:12", "app@md5:" + "0" * 64, "a//b", "app:-x"])
def test_a_malformed_reference_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse(text)


# -- the same listings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _fixtures())
def test_extract_from_the_registry_gives_the_tarballs_truth(name: str, registry, capsysbinary, tmp_path: Path) -> None:
    ref = registry.push(name)
    res = run(capsysbinary, "extract", ref, "/", "-o", tmp_path / "out")
    assert res.rc == 0, res.err
    assert diff(portable(image_truth(name)), portable(listing_from_dir(tmp_path / "out"))) == []


@pytest.mark.parametrize("name", _fixtures())
def test_the_mount_of_a_registry_image_gives_the_tarballs_truth(name: str, registry, mount,
                                                                tmp_path: Path) -> None:
    ref = registry.push(name)
    mp = mount(ref, cache_dir=str(tmp_path / "cache"))
    problems = diff(image_truth(name), listing_from_dir(mp / "merged"))
    assert not problems, "\n".join(problems[:20])
    with imgfs.open_archive(ref, use_cache=False) as a:
        assert sorted(os.listdir(mp / "layers")) == sorted(la.name for la in a.images[0].layers)


def test_a_zstd_push_reads_the_same(regtools, capsysbinary, tmp_path: Path) -> None:
    name = "seed.docker-legacy.tar"
    # A registry of its own: skopeo reuses a gzip blob of the same layer that a registry already holds.
    registry = regtools.Registry(tmp_path)
    try:
        ref = registry.push(name, compress="zstd")
        _check_zstd(ref, name, capsysbinary, tmp_path)
    finally:
        registry.stop()


def _check_zstd(ref: str, name: str, capsysbinary, tmp_path: Path) -> None:
    with imgfs.open_archive(ref, cache_dir=tmp_path / "c") as a:
        assert {la.compression for la in a.images[0].layers} == {"zstd"}
    res = run(capsysbinary, "extract", ref, "/", "-o", tmp_path / "out")
    assert res.rc == 0, res.err
    assert diff(portable(image_truth(name)), portable(listing_from_dir(tmp_path / "out"))) == []


def test_a_multi_platform_index_lists_its_platforms_and_platform_picks_one(registry, capsysbinary) -> None:
    name = "seed.oci-index.tar"
    ref = registry.push(name, all_images=True)
    res = run(capsysbinary, "images", ref, "--json")
    assert res.rc == 0, res.err
    platforms = sorted(i["platform"] for i in res.json()["images"])
    entries = truth_index()[name]["images"]
    assert len(platforms) == len(entries) >= 2
    for platform in platforms:
        res = run(capsysbinary, "ls", ref, "/", "--platform", platform)
        assert res.rc == 0, res.err
    with imgfs.open_archive(ref, use_cache=False) as a:
        for entry in entries:
            img = next(i for i in a.images if [la.diff_id for la in i.layers] == entry["diff_ids"])
            problems = diff(load_truth(entry["rootfs_truth"][0]), listing_from_tree(img.merged()))
            assert not problems, "\n".join(problems[:10])


def test_a_reference_by_digest_opens_that_manifest(registry) -> None:
    ref = registry.push("seed.podman-docker.tar")
    with imgfs.open_archive(ref, use_cache=False) as a:
        digest = a.images[0].digest
    by_digest = ref.rsplit(":", 1)[0] + "@" + digest
    with imgfs.open_archive(by_digest, use_cache=False) as a:
        assert a.images[0].digest == digest and a.images[0].refs == [by_digest.removeprefix("docker://")]


def test_an_unknown_tag_or_repository_is_one_line(registry, capsysbinary) -> None:
    ref = registry.push("seed.podman-docker.tar")
    res = run(capsysbinary, "ls", ref.rsplit(":", 1)[0] + ":nope")
    assert_one_line_error(res, "no such image")
    res = run(capsysbinary, "ls", f"docker://{registry.host}/nothing/here:1")
    assert_one_line_error(res, "no such image")


def test_nothing_listens_is_a_clear_error_not_a_hang(capsysbinary, regtools) -> None:
    port = regtools.free_port()
    res = run(capsysbinary, "ls", f"docker://127.0.0.1:{port}/app:1")
    assert_one_line_error(res, f"127.0.0.1:{port}")


# -- lazy, counted in bytes ------------------------------------------------------------------------------
def _sizes(ref: str) -> tuple[dict[str, int], str, list[str]]:
    with imgfs.open_archive(ref, use_cache=False) as a:
        img = a.images[0]
        return ({la.digest: la.blob_size for la in img.layers}, img.config_digest,
                [la.digest for la in img.layers])


def test_images_and_layer_names_download_no_layer_and_cat_of_the_top_layer_no_other(
        registry, proxy, capsysbinary, tmp_path: Path) -> None:
    ref = registry.push("seed.docker-legacy.tar")
    sizes, config, layers = _sizes(ref)
    p = proxy()
    via = ref.replace(registry.host, p.host)
    cache = tmp_path / "cache"
    for argv in (["images", via], ["layers", "--names", via]):
        p.reset()
        res = run(capsysbinary, "--cache-dir", cache, *argv)
        assert res.rc == 0, res.err
        assert set(p.blob_bytes) <= {config}, argv  # the config, and not one byte of a layer
    p.reset()
    res = run(capsysbinary, "--cache-dir", cache, "cat", via, "/app/trace.log", "--layer", "-1")
    assert res.rc == 0 and res.out == b"trace\n", res.err
    assert set(p.blob_bytes) - {config} == {layers[-1]}
    assert p.blob_bytes[layers[-1]] <= sizes[layers[-1]] + 64  # one pass over it (and its first bytes)


def test_a_second_mount_of_the_same_image_downloads_no_blob(registry, proxy, mount,
                                                            tmp_path: Path) -> None:
    ref = registry.push("whiteout.docker-legacy.tar")
    p = proxy()
    via = ref.replace(registry.host, p.host)
    cache = str(tmp_path / "cache")
    mp = mount(via, cache_dir=cache)
    first = listing_from_dir(mp / "merged")
    assert p.blob_bytes
    subprocess.run(["fusermount", "-u", str(mp)], check=True)
    p.reset()
    mp2 = mount(via, cache_dir=cache)
    assert listing_from_dir(mp2 / "merged") == first
    for path in (mp2 / "merged").rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.read_bytes()
    assert not p.blob_bytes, p.blob_bytes  # not even the config: documents are kept by digest


def test_an_uncompressed_layer_is_read_by_ranges_only_where_it_is_read(registry, regtools) -> None:

    big = os.urandom(3 << 20)
    layer = tar_of([F("a.txt", b"first\n"), F("big.bin", big), F("z.txt", b"last\n")])
    regtools.push_image(registry.host, "ranges", "t1", [(layer, regtools.OCI_LAYER)], config_for([layer]))
    with imgfs.open_archive(f"docker://{registry.host}/ranges:t1", use_cache=False) as a:
        tree = a.images[0].merged()
        blob = a.blobs.open(a.images[0].layers[0].member)
        assert 0 < blob.downloaded < len(layer) * 2 // 3  # the headers (read ahead), not the big file
        assert tree.read(tree.file("/big.bin"), 2 << 20, 1000) == big[2 << 20:(2 << 20) + 1000]
        assert tree.read(tree.file("/z.txt"), 0, 100) == b"last\n"
        assert tree.read(tree.file("/a.txt"), 0, 100) == b"first\n"
        assert blob.downloaded < len(layer)


def test_schema1_is_refused_clearly(registry, proxy, capsysbinary) -> None:
    ref = registry.push("seed.podman-docker.tar")
    p = proxy()

    def schema1(h) -> bool:
        if "/manifests/" not in h.path:
            return False
        body = json.dumps({"schemaVersion": 1, "name": "x", "tag": "t1", "fsLayers": []}).encode()
        h.reply(200, [("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")], body)
        return True

    p.hooks.append(schema1)
    res = run(capsysbinary, "ls", ref.replace(registry.host, p.host))
    assert_one_line_error(res, "schema 1")


def test_listing_the_layers_of_a_mount_downloads_no_layer_and_reading_one_only_that_one(
        registry, proxy, mount, tmp_path: Path) -> None:
    ref = registry.push("seed.docker-legacy.tar")
    _, config, layers = _sizes(ref)
    p = proxy()
    mp = mount(ref.replace(registry.host, p.host), cache_dir=str(tmp_path / "cache"))
    names = sorted(os.listdir(mp / "layers"))
    assert len(names) == 4
    assert set(p.blob_bytes) <= {config}, p.blob_bytes
    top = next(n for n in names if n.startswith("4 "))
    assert (mp / "layers" / top / "app" / "trace.log").read_bytes() == b"trace\n"
    assert set(p.blob_bytes) - {config} == {layers[-1]}, p.blob_bytes  # that layer, and no other


def test_verify_and_fsspec_work_on_a_reference(registry, capsysbinary, tmp_path: Path) -> None:
    import fsspec

    ref = registry.push("seed.docker-legacy.tar")
    res = run(capsysbinary, "verify", ref)
    assert res.rc == 0 and b"FAILED" not in res.out, res.err
    with fsspec.open("imgfs://app/trace.log", fo=ref, cache_dir=tmp_path) as fh:
        assert fh.read() == b"trace\n"
