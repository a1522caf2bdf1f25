"""Format detection and errors on small archives built here: docker-archive, OCI layouts, nested indexes."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import zstandard

import imgfs
from imgfs.errors import FormatError, ImgfsError, SelectionError
from tarmaker import ArchiveBuilder, D, F, config_for, digest_of, tar_of

L1 = tar_of([D("etc"), F("etc/one", b"1")])
L2 = tar_of([F("etc/two", b"2")])
L3 = tar_of([F("etc/three", b"3")])
EMPTY = bytes(1024)  # the empty layer tar: diff_id sha256:5f70bf18a086...


class Opened:
    """An archive opened without the user's cache, its warnings collected."""

    def __init__(self, path: str | Path) -> None:
        self.warnings: list[str] = []
        self.archive = imgfs.open_archive(path, use_cache=False, warn=self.warnings.append)


def build(tmp_path: Path, b: ArchiveBuilder, name: str = "a.tar") -> str:
    """Save the builder's archive in tmp_path."""
    return b.save(tmp_path / name)


def files(img: imgfs.Image) -> dict[str, bytes]:
    """Path -> content of the regular files of the merged tree."""
    tree = img.merged()
    return {p.decode(): b"".join(tree.read_all(r)) for p, r in tree.walk() if tree.entry_for(p, r).kind == "file"}


def files_partial(img: imgfs.Image) -> dict[str, bytes]:
    """files() of the merged view without the layers that cannot be read."""
    img.partial = True
    return files(img)


def oci(layers: list[bytes], **kw: object) -> ArchiveBuilder:
    """An OCI archive with one image of these layers."""
    b = ArchiveBuilder()
    b.oci_index([b.oci_image(layers, **kw)])  # type: ignore[arg-type]
    return b


def docker(layers: list[bytes], tags: list[str] | None = None) -> tuple[ArchiveBuilder, dict]:
    """A legacy docker-archive with one image; the manifest.json entry is returned for changes before saving."""
    b = ArchiveBuilder()
    entry = b.docker_image(layers, tags or ["img:1"])
    return b, entry


# -- what is not an image archive -----------------------------------------------------------------------
def test_plain_tar_is_not_an_image_archive(tmp_path: Path) -> None:
    path = tmp_path / "plain.tar"
    path.write_bytes(tar_of([F("hello.txt", b"hi"), D("etc")]))
    with pytest.raises(FormatError, match="not a container image archive") as e:
        Opened(path)
    assert str(path) in str(e.value)  # errors name the archive


@pytest.mark.parametrize("content", [b"", b"just text\n" * 200, gzip.compress(b"not a tar" * 100),
                                     zstandard.ZstdCompressor().compress(b"x" * 5000)],
                         ids=["empty", "text", "gzip-of-text", "zstd-of-text"])
def test_non_tar_files_are_format_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f.tar"
    path.write_bytes(content)
    with pytest.raises(FormatError):
        Opened(path)


def test_directory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="directory"):
        Opened(tmp_path)
    with pytest.raises(FormatError):
        Opened(tmp_path / "absent.tar")


# -- docker-archive ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("manifest", [b"[{", b"", b"\xff\xfe", b"{}", b"[1]", b'[{"Config": "x.json"}]',
                                      b'[{"Config": 5, "Layers": []}]', b'[{"Config": "c.json", "Layers": "x"}]'],
                         ids=["truncated", "empty", "not-utf8", "object", "number", "no-layers", "config-int",
                              "layers-str"])
def test_broken_manifest_json(tmp_path: Path, manifest: bytes) -> None:
    b, _ = docker([L1])
    b.add("manifest.json", manifest)
    with pytest.raises(FormatError, match="manifest.json"):
        Opened(build(tmp_path, b))


def test_missing_config_in_docker_archive(tmp_path: Path) -> None:
    b, entry = docker([L1])
    del b.members[entry["Config"]]
    b.add("manifest.json", [entry])
    with pytest.raises(FormatError, match="config"):
        Opened(build(tmp_path, b))


def test_missing_layer_keeps_the_image_usable(tmp_path: Path) -> None:
    b, entry = docker([L1, L2, L3])
    del b.members[entry["Layers"][1]]
    b.add("manifest.json", [entry])
    o = Opened(build(tmp_path, b))
    img = o.archive.image()
    assert len(img.layers) == 3
    with pytest.raises(ImgfsError):
        img.layers[1].index()
    with pytest.raises(FormatError, match="layer 2"):  # without it the merged view would be stale
        files(img)
    assert files_partial(img) == {"etc/one": b"1", "etc/three": b"3"}  # asked for: and a warning says so
    assert any("partial view: layer 2" in w for w in o.warnings)
    with pytest.raises(FormatError):
        img.layer_tree(1)
    assert img.layer_tree(2).lookup("etc/three") is not None


def test_legacy_quirks_dot_paths_symlinked_duplicates_and_order(tmp_path: Path) -> None:
    # Rule 5: './' prefixes in manifest.json, and a duplicate layer saved once with a relative symlink to it.
    b = ArchiveBuilder()
    entry = b.docker_image([L1, L2], ["img:1"], config=config_for([L1, L2, L1]), prefix="./")
    dup = hashlib.sha256(b"dup").hexdigest()
    b.symlink(f"{dup}/layer.tar", "../" + entry["Layers"][0].removeprefix("./"))
    entry["Layers"].append(f"./{dup}/layer.tar")  # L1, L2, then L1 again through the symlink
    b.members = dict(reversed(list(b.members.items())))  # layer directories out of layer order
    b.add("manifest.json", [entry])
    img = Opened(build(tmp_path, b)).archive.image()
    assert [la.diff_id for la in img.layers] == [digest_of(L1), digest_of(L2), digest_of(L1)]
    assert files(img) == {"etc/one": b"1", "etc/two": b"2"}
    assert img.layers[2].index().names == img.layers[0].index().names


def test_every_image_of_a_multi_image_save_is_reachable(tmp_path: Path) -> None:
    # Rule 7.
    b = ArchiveBuilder()
    entries = [b.docker_image([L1], ["one:1"]), b.docker_image([L1, L2], ["two:2", "two:latest"]),
               b.docker_image([L3], [])]
    b.add("manifest.json", entries)
    a = Opened(build(tmp_path, b)).archive
    assert len(a.images) == 3
    assert files(a.image("one:1")) == {"etc/one": b"1"}
    assert a.image("two") is a.image("two:2")
    untagged = [i for i in a.images if not i.refs]
    assert len(untagged) == 1 and a.image(untagged[0].config_digest.split(":")[1][:12]) is untagged[0]
    with pytest.raises(SelectionError):
        a.image()


def test_docker_oci_with_broken_index_json_uses_manifest_json(tmp_path: Path) -> None:
    b = ArchiveBuilder()
    b.oci_index([b.oci_image([L1, L2])])
    cfg = next(p for p, d in b.members.items() if b'"rootfs"' in d)
    b.add("manifest.json", [{"Config": cfg, "RepoTags": ["x:1"], "Layers": [
        "blobs/sha256/" + digest_of(L1).split(":")[1], "blobs/sha256/" + digest_of(L2).split(":")[1]]}])
    b.add("index.json", b"{broken")
    o = Opened(build(tmp_path, b))
    assert files(o.archive.image("x:1")) == {"etc/one": b"1", "etc/two": b"2"}
    assert any("index.json" in w for w in o.warnings)


def test_repeated_empty_layers_rule_3(tmp_path: Path) -> None:
    layers = [L1, EMPTY, EMPTY, L2]
    hist = [{"created_by": "ADD base"}, {"created_by": "WORKDIR /a"}, {"created_by": "WORKDIR /b"},
            {"created_by": "RUN x"}]
    b = ArchiveBuilder()
    b.add("manifest.json", [b.docker_image([L1, EMPTY, L2], ["e:1"], config=config_for(layers, hist))])
    # The legacy writer saves one directory per distinct layer: point the manifest at them in layer order.
    entry = json.loads(b.members["manifest.json"])[0]
    entry["Layers"] = [entry["Layers"][0], entry["Layers"][1], entry["Layers"][1], entry["Layers"][2]]
    b.add("manifest.json", [entry])
    img = Opened(build(tmp_path, b)).archive.image()
    names = [la.name for la in img.layers]
    assert len(set(names)) == 4 and names[1].startswith("2 ") and names[2].startswith("3 ")
    assert files(img) == {"etc/one": b"1", "etc/two": b"2"}


def test_history_shorter_than_layers_through_open_archive(tmp_path: Path) -> None:
    b = ArchiveBuilder()
    b.add("manifest.json", [b.docker_image([L1, L2], ["h:1"], config=config_for(
        [L1, L2], [{"created_by": "RUN first"}]))])
    o = Opened(build(tmp_path, b))
    img = o.archive.image()
    assert img.layers[0].name == "1 RUN first"
    assert digest_of(L2).split(":")[1][:12] in img.layers[1].name
    assert any("history" in w for w in o.warnings)
    assert files(img) == {"etc/one": b"1", "etc/two": b"2"}


def test_layer_sources_of_the_wrong_shape(tmp_path: Path) -> None:
    b, entry = docker([L1])
    entry["LayerSources"] = {digest_of(L1): "not-an-object"}
    b.add("manifest.json", [entry])
    try:
        img = Opened(build(tmp_path, b)).archive.image()
    except ImgfsError:
        return
    assert files(img) == {"etc/one": b"1"}


def test_repo_tags_of_the_wrong_shape(tmp_path: Path) -> None:
    b, entry = docker([L1])
    entry["RepoTags"] = "seed:latest"
    b.add("manifest.json", [entry])
    img = Opened(build(tmp_path, b)).archive.images[0]
    assert all(len(r) > 1 for r in img.refs), img.refs


# -- OCI layouts --------------------------------------------------------------------------------------------
def test_missing_config_blob_in_oci(tmp_path: Path) -> None:
    b = oci([L1])
    cfg = next(p for p, d in b.members.items() if b'"rootfs"' in d)
    del b.members[cfg]
    with pytest.raises(FormatError, match="config"):
        Opened(build(tmp_path, b))


def test_missing_manifest_blob_in_oci(tmp_path: Path) -> None:
    b = ArchiveBuilder()
    b.oci_index([{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "0" * 64,
                  "size": 1}])
    with pytest.raises(FormatError, match="missing"):
        Opened(build(tmp_path, b))


def test_missing_layer_blob_in_oci(tmp_path: Path) -> None:
    b = oci([L1, L2, L3])
    del b.members["blobs/sha256/" + digest_of(L2).split(":")[1]]
    o = Opened(build(tmp_path, b))
    img = o.archive.image()
    with pytest.raises(ImgfsError):
        img.layers[1].index()
    with pytest.raises(FormatError, match="layer 2"):
        files(img)
    assert files_partial(img) == {"etc/one": b"1", "etc/three": b"3"}
    assert o.warnings


def test_layer_compression_comes_from_magic_bytes(tmp_path: Path) -> None:
    # Rule 6 / quirk 4: one gzip, one zstd, one plain layer, each labelled with the wrong media type.
    blobs = [gzip.compress(L1), zstandard.ZstdCompressor().compress(L2), L3]
    b = ArchiveBuilder()
    cfg = b.blob(config_for([L1, L2, L3]), "application/vnd.oci.image.config.v1+json")
    lds = [b.blob(blob, mt) for blob, mt in zip(blobs, ["application/vnd.oci.image.layer.v1.tar",
                                                        "application/vnd.oci.image.layer.v1.tar+gzip",
                                                        "application/vnd.oci.image.layer.v1.tar+zstd"], strict=True)]
    b.oci_index([b.blob({"schemaVersion": 2, "config": cfg, "layers": lds},
                        "application/vnd.oci.image.manifest.v1+json")])
    img = Opened(build(tmp_path, b)).archive.image()
    assert [la.compression for la in img.layers] == ["gzip", "zstd", None]
    assert files(img) == {"etc/one": b"1", "etc/two": b"2", "etc/three": b"3"}


def _fake_blob(b: ArchiveBuilder, name: str, doc: dict) -> dict:
    """A blob stored under a digest that is not its hash (the only way a blob can name itself)."""
    hexd = hashlib.sha256(name.encode()).hexdigest()
    b.add(f"blobs/sha256/{hexd}", doc)
    return {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{hexd}", "size": 1}


def test_nested_index_cycle_is_an_error(tmp_path: Path) -> None:
    b = ArchiveBuilder()
    a_desc = _fake_blob(b, "a", {})
    b_desc = _fake_blob(b, "b", {"schemaVersion": 2, "manifests": [a_desc]})
    _fake_blob(b, "a", {"schemaVersion": 2, "manifests": [b_desc]})  # a -> b -> a
    b.oci_index([a_desc])
    with pytest.raises(FormatError, match="cycle|nested"):
        Opened(build(tmp_path, b))


def test_self_referencing_index_is_an_error(tmp_path: Path) -> None:
    b = ArchiveBuilder()
    me = _fake_blob(b, "me", {})
    _fake_blob(b, "me", {"schemaVersion": 2, "manifests": [me]})
    b.oci_index([me])
    with pytest.raises(FormatError):
        Opened(build(tmp_path, b))


def test_deep_nesting_is_an_error_shallow_nesting_works(tmp_path: Path) -> None:
    for depth, ok in ((3, True), (40, False)):
        b = ArchiveBuilder()
        desc = b.oci_image([L1])
        for _ in range(depth):
            desc = b.oci_index([desc], path="")
        b.oci_index([desc])
        path = build(tmp_path, b, f"d{depth}.tar")
        if ok:
            assert files(Opened(path).archive.image()) == {"etc/one": b"1"}
        else:
            with pytest.raises(FormatError):
                Opened(path)


def test_diamond_index_is_not_a_cycle(tmp_path: Path) -> None:
    # Two inner indexes listing the same manifest: seen twice, but no cycle.
    b = ArchiveBuilder()
    m = b.oci_image([L1], platform={"os": "linux", "architecture": "amd64"})
    left = b.oci_index([m], path="")
    right = b.oci_index([m], path="")
    b.oci_index([left, right])
    a = Opened(build(tmp_path, b)).archive
    assert all(files(i) == {"etc/one": b"1"} for i in a.images)


@pytest.mark.parametrize("doc", [{"schemaVersion": 2}, {"architecture": "amd64", "rootfs": {}}, [1, 2],
                                 {"layers": "x", "config": {}}], ids=["empty", "a-config", "a-list", "bad-layers"])
def test_unknown_document_is_an_error(tmp_path: Path, doc: object) -> None:
    b = ArchiveBuilder()
    b.oci_index([b.blob(doc, "application/vnd.oci.image.manifest.v1+json")])  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        Opened(build(tmp_path, b))


@pytest.mark.parametrize("index", [b"{", b"[]", b'{"manifests": 3}', b'{"manifests": [{"size": 1}]}',
                                   b'{"manifests": [{"digest": "sha256:../../etc"}]}',
                                   b'{"manifests": [{"digest": "nonsense"}]}'])
def test_broken_index_json(tmp_path: Path, index: bytes) -> None:
    b = ArchiveBuilder()
    b.add("oci-layout", {"imageLayoutVersion": "1.0.0"})
    b.add("index.json", index)
    with pytest.raises(FormatError):
        Opened(build(tmp_path, b))


def test_attestation_manifests_are_skipped(tmp_path: Path) -> None:
    b = ArchiveBuilder()
    real = b.oci_image([L1], platform={"os": "linux", "architecture": "amd64"})
    att1 = b.oci_image([L3], platform={"os": "unknown", "architecture": "unknown"})
    att2 = b.oci_image([L2], annotations={"vnd.docker.reference.type": "attestation-manifest",
                                          "vnd.docker.reference.digest": real["digest"]})
    b.oci_index([b.oci_index([real, att1, att2], path="")])
    a = Opened(build(tmp_path, b)).archive
    assert len(a.images) == 1
    assert files(a.image()) == {"etc/one": b"1"}


def test_platform_choice_in_an_index(tmp_path: Path) -> None:
    b = ArchiveBuilder()
    plats = [("linux", "amd64", None), ("linux", "arm64", "v8"), ("linux", "s390x", None)]
    descs = []
    for n, (os_, arch, var) in enumerate(plats):
        p = {"os": os_, "architecture": arch} | ({"variant": var} if var else {})
        descs.append(b.oci_image([[L1, L2, L3][n]], platform=p,
                                 annotations={"org.opencontainers.image.ref.name": "multi"}))
    b.oci_index([b.oci_index(descs, path="")])
    a = Opened(build(tmp_path, b)).archive
    assert sorted(i.platform for i in a.images) == ["linux/amd64", "linux/arm64/v8", "linux/s390x"]
    assert files(a.image("multi", platform="linux/s390x")) == {"etc/three": b"3"}
    assert files(a.image(platform="linux/arm64")) == {"etc/two": b"2"}
    with pytest.raises(SelectionError):
        a.image(platform="windows/amd64")
    with pytest.raises(SelectionError):
        a.image("other")
