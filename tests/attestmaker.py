"""Archives holding attestations as buildx saves them, built from the documented formats."""

from __future__ import annotations

from pathlib import Path

from tarmaker import ArchiveBuilder, F, tar_of

IN_TOTO = "application/vnd.in-toto+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json",
         "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2}
AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64 = {"os": "linux", "architecture": "arm64", "variant": "v8"}


def statement(predicate_type: str, subject: str, predicate: dict) -> dict:
    """An in-toto statement about the image manifest `subject`."""
    return {"_type": "https://in-toto.io/Statement/v0.1", "predicateType": predicate_type,
            "subject": [{"name": "pkg:docker/app@1", "digest": {"sha256": subject.removeprefix("sha256:")}}],
            "predicate": predicate}


def attestation(b: ArchiveBuilder, image: dict, statements: list[tuple[dict, bool]]) -> dict:
    """buildx's attestation manifest for `image`: in-toto layers (annotated with their predicate type when
    the flag says so), and the index descriptor buildx gives it."""
    layers = []
    for doc, annotated in statements:
        extra = {"annotations": {"in-toto.io/predicate-type": doc["predicateType"]}} if annotated else {}
        layers.append(b.blob(doc, IN_TOTO, **extra))
    config = b.blob({"architecture": "unknown", "os": "unknown", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": [la["digest"] for la in layers]}},
                    "application/vnd.oci.image.config.v1+json")
    return b.blob({"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers}, MANIFEST,
                  platform={"os": "unknown", "architecture": "unknown"},
                  annotations={"vnd.docker.reference.digest": image["digest"],
                               "vnd.docker.reference.type": "attestation-manifest"})


def buildx_archive(tmp_path: Path) -> tuple[str, dict, dict, dict[str, dict]]:
    """Two platforms, each with an SBOM and a provenance attestation, as buildx --sbom --provenance saves them."""
    b = ArchiveBuilder()
    amd = b.oci_image([tar_of([F("app/x", b"amd")])], platform=AMD64)
    arm = b.oci_image([tar_of([F("app/x", b"arm")])], platform=ARM64)
    docs = {
        "amd-sbom": statement("https://spdx.dev/Document", amd["digest"], {"spdxVersion": "SPDX-2.3", "name": "amd"}),
        "amd-prov": statement("https://slsa.dev/provenance/v0.2", amd["digest"], {"builder": {"id": "amd"}}),
        "arm-sbom": statement("https://spdx.dev/Document", arm["digest"], {"spdxVersion": "SPDX-2.3", "name": "arm"}),
        "arm-prov": statement("https://slsa.dev/provenance/v1", arm["digest"], {"buildDefinition": {}}),
    }
    att_amd = attestation(b, amd, [(docs["amd-sbom"], True), (docs["amd-prov"], True)])
    att_arm = attestation(b, arm, [(docs["arm-sbom"], True), (docs["arm-prov"], False)])  # read from the statement
    b.oci_index([b.oci_index([amd, arm, att_amd, att_arm], path="")])
    return b.save(tmp_path / "buildx.tar"), amd, arm, docs
