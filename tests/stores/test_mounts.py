"""Places other than a tarball, extracted and mounted: a directory layout gives the truth; attestations/ of an image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from attestmaker import buildx_archive
from clihelp import run
from conftest import IMAGES, truth_index
from layouts import oci_layout, skopeo_dir, unpacked
from truthlib import diff, listing_from_dir, load_truth, portable

PLACES = {
    "unpacked docker save (>= 25)": ("seed.docker-oci.tar", lambda a, d: unpacked(a, d)),
    "unpacked docker save (<= 24)": ("links.docker-legacy.tar", lambda a, d: unpacked(a, d)),
    "unpacked podman docker-archive": ("meta.podman-docker.tar", lambda a, d: unpacked(a, d)),
    "oci:DIR": ("whiteout.skopeo-oci-gzip.tar", lambda a, d: "oci:" + str(oci_layout(a, d))),
    "skopeo dir:": ("multistage.docker-oci.tar", lambda a, d: skopeo_dir(a, d)),
}


@pytest.mark.parametrize("kind", PLACES)
def test_a_mounted_directory_layout_shows_the_truth_in_merged(kind: str, mount, tmp_path: Path) -> None:
    name, make = PLACES[kind]
    entry = truth_index()[name]["images"][0]
    mp = mount(make(IMAGES / name, tmp_path / "place"))
    problems = diff(load_truth(entry["rootfs_truth"][0]), listing_from_dir(mp / "merged"))
    assert not problems, f"{kind}: {len(problems)} differences\n" + "\n".join(problems[:15])
    assert len(os.listdir(mp / "layers")) == len(entry["diff_ids"])


def test_the_mount_shows_each_attestation_statement_beside_layers_and_merged(mount, tmp_path: Path) -> None:
    path, amd, arm, docs = buildx_archive(tmp_path)
    mp = mount(path, platform="linux/arm64")
    assert sorted(os.listdir(mp)) == ["attestations", "config.json", "layers", "manifest.json", "merged"]
    assert sorted(os.listdir(mp / "attestations")) == ["provenance.json", "sbom.spdx.json"]
    assert json.loads((mp / "attestations" / "sbom.spdx.json").read_bytes()) == docs["arm-sbom"]
    assert json.loads((mp / "attestations" / "provenance.json").read_bytes()) == docs["arm-prov"]
    with pytest.raises(OSError):
        (mp / "attestations" / "sbom.spdx.json").write_text("{}")


def _directory_cases() -> list[tuple[str, str]]:
    """Every fixture unpacked (tar -x), and every OCI fixture copied into oci:DIR by skopeo."""
    index = truth_index()
    oci = [n for n in sorted(index) if index[n]["format"].startswith(("skopeo", "podman-oci", "oci"))]
    return [("unpacked", n) for n in sorted(index)] + [("oci", n) for n in oci]


@pytest.mark.parametrize("kind, name", _directory_cases(), ids=lambda v: v)
def test_every_fixture_as_a_directory_gives_its_truth_through_extract_and_the_mount(
        kind: str, name: str, mount, tmp_path: Path, capsysbinary) -> None:
    place = unpacked(IMAGES / name, tmp_path / "place") if kind == "unpacked" else \
        "oci:" + str(oci_layout(IMAGES / name, tmp_path / "place"))
    for n, entry in enumerate(truth_index()[name]["images"]):
        # By the config digest: every image of the archive, whatever names it has or lacks.
        config = entry.get("config_digest") or "sha256:" + entry["config"].rsplit("/", 1)[-1].removesuffix(".json")
        pick = config.removeprefix("sha256:")[:16]
        want = load_truth(entry["rootfs_truth"][0])
        out = tmp_path / f"out{n}"
        res = run(capsysbinary, "extract", place, "/", "-o", out, "--image", pick)
        assert res.rc == 0, res.err
        assert diff(portable(want), portable(listing_from_dir(out))) == [], f"{kind} {name}: extract"
        mp = mount(place, image=pick)
        problems = diff(want, listing_from_dir(mp / "merged"))
        assert not problems, f"{kind} {name}: {len(problems)} differences\n" + "\n".join(problems[:15])
