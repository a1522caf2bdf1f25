"""Property tests: random manifest.json, index.json, manifests and configs: open_archive works or raises ImgfsError."""

from __future__ import annotations

import contextlib
import gzip
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imgfs
from conftest import fuzz_derandomize, fuzz_examples
from imgfs.errors import ImgfsError
from tarmaker import OPQ, WH, ArchiveBuilder, D, F, H, S, digest_of, tar_of

L1 = tar_of([D("etc"), F("etc/one", b"1"), S("etc/l", "one"), D("gone"), F("gone/x", b"x")])
L2 = tar_of([WH("gone"), OPQ("etc"), F("etc/two", b"2"), H("etc/h", "etc/two")])
LAYERS = [L1, L2, gzip.compress(L2, mtime=0)]
DIGESTS = [digest_of(la) for la in LAYERS]

TEXT = st.text(max_size=12)  # lone surrogates included: JSON can carry them ("\ud800")
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 2**64) | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=8)


def _maybe(strategy: st.SearchStrategy, junk: st.SearchStrategy = JSON) -> st.SearchStrategy:
    """Mostly the well-shaped value, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, strategy, junk)


def _pick(good: list[str], odd: list[str]) -> st.SearchStrategy:
    """Mostly one of the names that exist, sometimes an odd one or any text."""
    return _maybe(st.sampled_from(good), st.sampled_from(odd) | TEXT)


ODD_PATHS = ["../etc/passwd", "", "/", "blobs", "blobs/sha256", "./manifest.json", "index.json"]
ODD_DIGESTS = ["sha256:" + "0" * 64, "sha256:", "md5:x", "sha256:../../x", "", "sha256:."]


@st.composite
def configs(draw: st.DrawFn) -> dict:
    """Image configs of random shape: diff_ids, history, platform fields."""
    hist_entry = st.fixed_dictionaries({}, optional={"created_by": _maybe(TEXT), "comment": _maybe(TEXT),
                                                     "empty_layer": _maybe(st.booleans()), "created": JSON})
    diff_ids = st.lists(_pick(DIGESTS[:2], ODD_DIGESTS), min_size=1, max_size=3)
    return draw(st.fixed_dictionaries({"rootfs": _maybe(st.fixed_dictionaries({"diff_ids": _maybe(diff_ids)}))},
                                      optional={
        "history": _maybe(st.lists(_maybe(hist_entry), max_size=4)),
        "os": _maybe(st.sampled_from(["linux", "windows"])),
        "architecture": _maybe(st.sampled_from(["amd64", "arm64"])),
        "variant": JSON, "config": JSON,
    }))


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    """An archive with real layer blobs and random JSON documents around them."""
    b = ArchiveBuilder()
    layer_descs = [b.blob(la) for la in LAYERS]
    cfg_descs = [b.blob(draw(configs())) for _ in range(draw(st.integers(1, 2)))]
    platform = st.fixed_dictionaries({"os": _maybe(st.sampled_from(["linux", "unknown"])),
                                      "architecture": _maybe(st.sampled_from(["amd64", "arm64", "unknown"]))},
                                     optional={"variant": JSON})
    annotations = st.dictionaries(st.sampled_from(["org.opencontainers.image.ref.name", "io.containerd.image.name",
                                                   "vnd.docker.reference.type"]) | TEXT, _maybe(TEXT), max_size=2)

    def descriptor(digests: list[str]) -> st.SearchStrategy:
        """OCI descriptors pointing mostly at `digests`."""
        return st.fixed_dictionaries({"digest": _pick(digests, ODD_DIGESTS)}, optional={
            "mediaType": JSON, "size": JSON, "platform": _maybe(platform), "annotations": _maybe(annotations)})

    manifests = []
    for _ in range(draw(st.integers(1, 3))):
        doc = draw(st.fixed_dictionaries({
            "config": _maybe(descriptor([d["digest"] for d in cfg_descs])),
            "layers": _maybe(st.lists(_maybe(descriptor(DIGESTS)), min_size=1, max_size=3))},
            optional={"schemaVersion": JSON, "mediaType": JSON, "manifests": JSON}))
        manifests.append(b.blob(doc)["digest"])
    for _ in range(draw(st.integers(0, 2))):  # nested indexes
        manifests.append(b.blob({"manifests": draw(st.lists(_maybe(descriptor(manifests)), max_size=3))})["digest"])
    kind = draw(st.sampled_from(["oci", "docker", "both"]))
    if kind in ("oci", "both"):
        b.add("index.json", draw(_maybe(st.fixed_dictionaries({"manifests": _maybe(st.lists(
            descriptor(manifests), min_size=1, max_size=3))}))))
    if kind in ("docker", "both"):
        cfg_paths = ["blobs/sha256/" + d["digest"].split(":")[1] for d in cfg_descs]
        layer_paths = ["blobs/sha256/" + d["digest"].split(":")[1] for d in layer_descs]
        source = st.fixed_dictionaries({}, optional={"digest": JSON, "mediaType": JSON, "size": JSON})
        entry = st.fixed_dictionaries({"Config": _pick(cfg_paths, ODD_PATHS),
                                       "Layers": _maybe(st.lists(_pick(layer_paths, ODD_PATHS), max_size=3))},
                                      optional={
            "RepoTags": _maybe(st.lists(_maybe(TEXT), max_size=2)),
            "LayerSources": _maybe(st.dictionaries(_pick(DIGESTS, ODD_DIGESTS), _maybe(source), max_size=2))})
        b.add("manifest.json", draw(_maybe(st.lists(entry, min_size=1, max_size=3))))
    return b.tar()


def _exercise(data: bytes) -> None:
    """Open the archive and touch everything a user could: names, selection, both trees, reads."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.tar"
        path.write_bytes(data)
        try:
            a = imgfs.open_archive(path, cache_dir=Path(tmp) / "cache", warn=lambda m: None)
        except ImgfsError:
            return
        with a:
            for img in a.images:
                assert isinstance(img.label, str) and all(isinstance(r, str) for r in img.refs)
                for layer in img.layers:
                    assert layer.name.split(" ", 1)[0].isdigit()
                    assert "/" not in layer.name and "\0" not in layer.name and len(layer.name.encode()) <= 255
                with contextlib.suppress(ImgfsError):  # refused where a layer cannot be read
                    img.merged()
                tree = img.merged(partial=True)
                for p, ref in tree.walk():
                    if tree.entry_for(p, ref).kind == "file":
                        with contextlib.suppress(ImgfsError):
                            b"".join(tree.read_all(ref))
                for n in range(len(img.layers)):
                    with contextlib.suppress(ImgfsError):
                        img.layer_tree(n)
                for ref in (img.label, *img.refs):
                    with contextlib.suppress(ImgfsError):
                        a.select(ref)
            with contextlib.suppress(ImgfsError):
                a.image()


@settings(max_examples=fuzz_examples(150), deadline=None, derandomize=fuzz_derandomize(),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example, HealthCheck.data_too_large])
@given(archives())
def test_random_documents_open_or_raise_imgfs_error(data: bytes) -> None:
    _exercise(data)


def test_the_strategy_reaches_working_images() -> None:
    # Guard against a strategy that only ever builds broken archives: a well-formed pick must open.
    b = ArchiveBuilder()
    b.oci_index([b.oci_image([L1, L2])])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.tar"
        path.write_bytes(b.tar())
        with imgfs.open_archive(path, use_cache=False) as a:
            tree = a.image().merged()
            assert tree.listdir("etc") == [b"h", b"two"]  # opaque etc, whiteout of gone, hard link
            assert tree.lookup("gone") is None
