"""Format detection as a list of formats (probe, parser) in a stated order, and references as Docker reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import imgfs
from conftest import IMAGES
from imgfs.errors import FormatError, SelectionError
from imgfs.formats import FORMATS, describe, normalize_ref
from layouts import skopeo_dir
from tarmaker import ArchiveBuilder, F, config_for, tar_of

L1 = tar_of([F("etc/one", b"1")])


class Members:
    """A reader over a dict of member bytes, as the formats layer sees any store."""

    def __init__(self, members: dict[str, bytes]) -> None:
        self.members = members

    def exists(self, path: str) -> bool:
        return path in self.members

    def read(self, path: str) -> bytes:
        if path not in self.members:
            raise FormatError(f"{path} is missing")
        return self.members[path]


def test_formats_are_tried_in_their_stated_order() -> None:
    assert [f.kind for f in FORMATS] == ["skopeo-dir", "docker-oci", "docker-archive", "oci-archive"]


def test_skopeo_dir_is_recognised_by_content_and_never_taken_for_a_docker_archive(tmp_path: Path) -> None:
    place = skopeo_dir(IMAGES / "seed.docker-oci.tar", tmp_path / "seed")
    (place / "version").unlink()  # by manifest.json's content alone, not by skopeo's version file
    with imgfs.open_archive(place, use_cache=False) as a:
        assert a.kind == "skopeo-dir"
        img = a.image()
        assert img.layers[-1].member == img.layers[-1].digest.removeprefix("sha256:")  # type: ignore[union-attr]
        tree = img.merged()
        assert b"".join(tree.read_all(tree.nodes[b"app/trace.log"])) == b"trace\n"
    with imgfs.open_archive(f"dir:{place}", use_cache=False) as a:
        assert a.kind == "skopeo-dir"


def test_a_list_in_manifest_json_is_docker_and_an_object_without_layers_is_refused_plainly() -> None:
    cfg = json.dumps(config_for([L1])).encode()
    docker = {"manifest.json": json.dumps([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["l.tar"]}]).encode(),
              "c.json": cfg, "l.tar": L1}
    assert describe(Members(docker))[0] == "docker-archive"
    listing = {"manifest.json": json.dumps({"schemaVersion": 2, "manifests": []}).encode()}
    with pytest.raises(FormatError, match="neither a list of images .* nor one image manifest"):
        describe(Members(listing))


@pytest.mark.parametrize(("ref", "full"), [
    ("test_image_1", "docker.io/library/test_image_1:latest"),
    ("test_image_1:latest", "docker.io/library/test_image_1:latest"),
    ("library/test_image_1", "docker.io/library/test_image_1:latest"),
    ("docker.io/library/test_image_1:latest", "docker.io/library/test_image_1:latest"),
    ("index.docker.io/library/app:2", "docker.io/library/app:2"),
    ("me/app", "docker.io/me/app:latest"),
    ("example.com/corpus/links:1.0", "example.com/corpus/links:1.0"),
    ("localhost/seed-buildah", "localhost/seed-buildah:latest"),
    ("localhost:5000/app:1", "localhost:5000/app:1"),
    ("app@sha256:" + "a" * 64, "docker.io/library/app@sha256:" + "a" * 64),
])
def test_references_are_normalised_as_docker_does(ref: str, full: str) -> None:
    assert normalize_ref(ref) == full


def _tagged(tmp_path: Path, tag: str) -> str:
    b = ArchiveBuilder()
    b.add("manifest.json", [b.docker_image([L1], [tag])])
    return b.save(tmp_path / f"{tag.replace('/', '_')}.tar")


@pytest.mark.parametrize("stored", ["test_image_1", "docker.io/library/test_image_1:latest"])
@pytest.mark.parametrize("asked", ["test_image_1", "test_image_1:latest", "library/test_image_1",
                                   "docker.io/library/test_image_1:latest"])
def test_a_stored_tag_without_tag_part_matches_every_spelling_and_back(tmp_path: Path, stored: str, asked: str) -> None:
    # go-containerregistry's test_bundle.tar stores `test_image_1` in RepoTags
    with imgfs.open_archive(_tagged(tmp_path, stored), use_cache=False) as a:
        assert a.image(asked).refs == [stored]
        with pytest.raises(SelectionError):
            a.image("test_image_1:2")
        with pytest.raises(SelectionError):
            a.image("other/test_image_1")
