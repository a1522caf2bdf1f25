"""One conformance suite that every store of blobs passes: the same images, layers and trees as the truth.

A new kind of place to read images from adds itself to KINDS (how to make such a place from a fixture
archive, and which fixtures it can hold); every test here then runs on it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import imgfs
from conftest import IMAGES, truth_index
from imgfs.errors import FormatError, ImgfsError
from layouts import DOCKER_FORMATS, OCI_FORMATS, oci_layout, skopeo_dir, unpacked
from truthlib import diff, listing_from_tree, load_truth


class Kind:
    """How to turn a fixture archive into a place of this kind, named as a user would name it."""

    def __init__(self, supports: Callable[[str, dict], bool],
                 make: Callable[[str, pytest.TempPathFactory, pytest.FixtureRequest], str]) -> None:
        self.supports, self.make = supports, make


def _transport(name: str, entry: dict) -> str:
    return ("oci-archive:" if entry["format"].startswith(OCI_FORMATS) else "docker-archive:") \
        + str(IMAGES / name)


_MADE: dict[tuple[str, str], str] = {}  # (kind, fixture) -> the place made from it, once a session


def _made(kind: str, make: Callable[[Path, Path], str]) -> Callable[[str, pytest.TempPathFactory, object], str]:
    def get(name: str, tmp: pytest.TempPathFactory, request: object) -> str:
        if (kind, name) not in _MADE:
            _MADE[kind, name] = make(IMAGES / name, tmp.mktemp(kind) / "place")
        return _MADE[kind, name]
    return get


def _is_oci(entry: dict) -> bool:
    return entry["format"].startswith(OCI_FORMATS)


KINDS: dict[str, Kind] = {
    "tarball": Kind(lambda name, entry: True, lambda name, tmp, request: str(IMAGES / name)),
    "transport": Kind(lambda name, entry: not name.endswith(".gz"),
                      lambda name, tmp, request: _transport(name, truth_index()[name])),
    # tar -x of every fixture (docker save of both versions, podman, OCI archives), named by its path
    "directory": Kind(lambda name, entry: True, _made("directory", lambda a, d: str(unpacked(a, d)))),
    # skopeo copy oci-archive:F oci:DIR:tag, named oci:DIR ...
    "oci": Kind(lambda name, entry: _is_oci(entry), _made("oci", lambda a, d: "oci:" + str(oci_layout(a, d)))),
    # ... and oci:DIR:REF, which picks the image by its ref
    "oci-ref": Kind(lambda name, entry: _is_oci(entry),
                    _made("oci-ref", lambda a, d: f"oci:{oci_layout(a, d, 'pick-me')}:pick-me")),
    # skopeo copy docker-archive:F dir:DIR (one image a copy), named by its path: recognised by content
    "skopeo-dir": Kind(lambda name, entry: entry["format"] in DOCKER_FORMATS and len(entry["images"]) == 1
                       and not name.endswith(".gz"),
                       _made("skopeo-dir", lambda a, d: str(skopeo_dir(a, d)))),
    # Pushed by skopeo into the session's loopback registry (tests/stores/conftest.py), read as docker://.
    "registry": Kind(lambda name, entry: len(entry["images"]) == 1 and not name.endswith(".gz"),
                     lambda name, tmp, request: request.getfixturevalue("registry").push(name)),
}


def _cases() -> list[tuple[str, str]]:
    index = truth_index()
    return [(kind, name) for kind, k in KINDS.items() for name in sorted(index) if k.supports(name, index[name])]


@pytest.fixture
def opened(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    kind, name = request.param
    where = KINDS[kind].make(name, tmp_path_factory, request)
    with imgfs.open_archive(where, cache_dir=tmp_path_factory.mktemp("cache"), warn=lambda m: None) as a:
        yield name, a


def _image_for(a: imgfs.Archive, entry: dict) -> imgfs.Image:
    # By the config, which every kind of place keeps (a manifest's position or digest may not survive a copy).
    config = entry.get("config_digest") or "sha256:" + entry["config"].rsplit("/", 1)[-1].removesuffix(".json")
    hits = [i for i in a.images if i.config_digest == config]
    assert hits, f"no image with config {config}"
    assert [la.diff_id for la in hits[0].layers] == entry["diff_ids"]
    return hits[0]


@pytest.mark.parametrize("opened", _cases(), indirect=True, ids=lambda c: f"{c[0]}:{c[1]}")
def test_every_image_of_the_fixture_is_there_with_its_layers(opened) -> None:
    name, a = opened
    for entry in truth_index()[name]["images"]:
        img = _image_for(a, entry)
        assert len(img.layers) == len(entry["diff_ids"])
        assert all(la.blob_size and la.blob_size > 0 for la in img.layers)


@pytest.mark.parametrize("opened", _cases(), indirect=True, ids=lambda c: f"{c[0]}:{c[1]}")
def test_the_merged_tree_equals_the_truth(opened) -> None:
    name, a = opened
    for entry in truth_index()[name]["images"]:
        problems = diff(load_truth(entry["rootfs_truth"][0]), listing_from_tree(_image_for(a, entry).merged()))
        assert not problems, f"{name}: {len(problems)} differences\n" + "\n".join(problems[:15])


@pytest.mark.parametrize("opened", _cases(), indirect=True, ids=lambda c: f"{c[0]}:{c[1]}")
def test_blobs_have_stable_distinct_origins_and_missing_paths_are_errors(opened) -> None:
    _, a = opened
    store = a.blobs
    members = {la.member for img in a.images for la in img.layers}
    origins = {m: store.origin(m) for m in members}
    assert origins == {m: store.origin(m) for m in members}  # the same bytes keep their cache key
    assert len(set(origins.values())) == len(members)  # and no two blobs share one
    missing = "blobs/sha256/" + "0" * 64
    assert not store.exists(missing)
    with pytest.raises(ImgfsError):
        store.open(missing)
    with pytest.raises(FormatError):
        store.read(missing)


@pytest.mark.parametrize("opened", _cases(), indirect=True, ids=lambda c: f"{c[0]}:{c[1]}")
def test_a_blob_reads_the_same_bytes_at_any_offset(opened) -> None:
    _, a = opened
    layer = a.images[0].layers[-1]
    src = a.blobs.open(layer.member)
    whole = src.pread(0, src.size)
    assert len(whole) == src.size == layer.blob_size
    for off, n in ((0, 1), (src.size // 3, 4096), (src.size - 7, 7)):
        n = max(0, min(n, src.size - off))
        assert src.pread(off, n) == whole[off:off + n]


def test_a_name_that_is_nothing_is_refused_in_one_line(tmp_path: Path) -> None:
    for where, says in ((tmp_path, "is a directory"), (tmp_path / "nope.tar", "cannot open")):
        with pytest.raises(ImgfsError) as e:
            imgfs.open_archive(where)
        assert says in str(e.value) and "\n" not in str(e.value)
