"""Attestations (buildx's layout) and OCI 1.1 artifacts: listed apart from images, never runnable, their
statements readable by name. The archives are built here from the documented formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imgfs
from attestmaker import AMD64, EMPTY, MANIFEST, buildx_archive
from tarmaker import ArchiveBuilder, F, tar_of


def test_buildx_attestations_are_artifacts_describing_their_image_never_images(tmp_path: Path) -> None:
    path, amd, arm, docs = buildx_archive(tmp_path)
    with imgfs.open_archive(path, use_cache=False) as a:
        assert sorted(i.platform for i in a.images) == ["linux/amd64", "linux/arm64/v8"]
        assert [(d.kind, d.subject) for d in a.artifacts] == [("attestation", amd["digest"]),
                                                              ("attestation", arm["digest"])]
        assert {d.artifact_type for d in a.artifacts} == {"application/vnd.oci.image.config.v1+json"}
        by_platform = {i.platform: dict(i.attestations()) for i in a.images}
    assert by_platform["linux/amd64"] == {"sbom.spdx.json": json.dumps(docs["amd-sbom"]).encode(),
                                          "provenance.json": json.dumps(docs["amd-prov"]).encode()}
    assert by_platform["linux/arm64/v8"] == {"sbom.spdx.json": json.dumps(docs["arm-sbom"]).encode(),
                                             "provenance.json": json.dumps(docs["arm-prov"]).encode()}


def oci11_archive(tmp_path: Path) -> tuple[str, dict, bytes]:
    """An image and, beside it in index.json, an OCI 1.1 SBOM artifact whose subject is the image; plus a
    signature-like artifact with no subject."""
    b = ArchiveBuilder()
    image = b.oci_image([tar_of([F("app/x", b"x")])], platform=AMD64)
    b.blob(b"{}")
    sbom = json.dumps({"spdxVersion": "SPDX-2.3", "name": "x"}).encode()
    artifact = b.blob({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": "application/spdx+json",
                       "config": EMPTY, "layers": [b.blob(sbom, "application/spdx+json")],
                       "subject": {"mediaType": MANIFEST, "digest": image["digest"], "size": image["size"]}},
                      MANIFEST, artifactType="application/spdx+json")
    lonely = b.blob({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": "application/vnd.example.sig",
                     "config": EMPTY, "layers": [b.blob(b"signature", "application/octet-stream")]}, MANIFEST)
    b.oci_index([dict(image, annotations={"org.opencontainers.image.ref.name": "app:1"}), artifact, lonely])
    return b.save(tmp_path / "oci11.tar"), image, sbom


def test_an_oci_1_1_artifact_with_a_subject_is_listed_apart_and_read_as_a_statement(tmp_path: Path) -> None:
    path, image, sbom = oci11_archive(tmp_path)
    with imgfs.open_archive(path, use_cache=False) as a:
        assert [i.digest for i in a.images] == [image["digest"]]
        assert [(d.kind, d.artifact_type, d.subject) for d in a.artifacts] == [
            ("artifact", "application/spdx+json", image["digest"]), ("artifact", "application/vnd.example.sig", None)]
        assert a.image().attestations() == [("sbom.spdx.json", sbom)]


def imgfs_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgfs", *args, "--no-cache"], capture_output=True, text=True,
                          timeout=60)


def test_images_prints_artifacts_after_the_images_and_attestations_prints_the_statements(tmp_path: Path) -> None:
    path, image, sbom = oci11_archive(tmp_path)
    res = imgfs_cli("images", path)
    assert res.returncode == 0, res.stderr
    lines = [line.split("\t") for line in res.stdout.splitlines()]
    assert [len(row) for row in lines] == [6, 4, 4]
    assert lines[0][0] == "app:1"
    assert lines[1][1:] == ["artifact", "application/spdx+json", "app:1"]
    assert lines[2][1:] == ["artifact", "application/vnd.example.sig", "-"]
    doc = json.loads(imgfs_cli("images", path, "--json").stdout)
    assert len(doc["images"]) == 1 and [d["describes"] for d in doc["artifacts"]] == ["app:1", None]
    res = imgfs_cli("attestations", path)
    assert (res.returncode, res.stdout) == (0, f"sbom.spdx.json\t{len(sbom)}\n"), res.stderr
    doc = json.loads(imgfs_cli("attestations", path, "--json").stdout)
    assert doc["attestations"] == [{"name": "sbom.spdx.json", "size": len(sbom), "statement": json.loads(sbom)}]


def test_attestations_picks_the_image_by_platform_and_says_when_there_are_none(tmp_path: Path) -> None:
    path, *_ = buildx_archive(tmp_path)
    res = imgfs_cli("attestations", path, "--platform", "linux/arm64")
    assert res.returncode == 0, res.stderr
    assert [line.split("\t")[0] for line in res.stdout.splitlines()] == ["sbom.spdx.json", "provenance.json"]
    b = ArchiveBuilder()
    b.oci_index([b.oci_image([tar_of([F("a", b"a")])])])
    res = imgfs_cli("attestations", b.save(tmp_path / "plain.tar"))
    assert (res.returncode, res.stdout) == (0, "") and "no attestations" in res.stderr
