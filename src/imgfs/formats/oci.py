"""OCI image layout: index.json, nested image indexes, manifests, several platforms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import FormatError
from .model import (
    ArtifactDesc,
    ImageDesc,
    LayerDesc,
    MemberReader,
    blob_path,
    config_platform,
    diff_ids,
    load_json,
    read_config,
)

MAX_DEPTH = 8
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
REFERENCE_TYPE = "vnd.docker.reference.type"  # buildx: "attestation-manifest"
REFERENCE_DIGEST = "vnd.docker.reference.digest"  # buildx: the image manifest an attestation describes
PREDICATE_TYPE = "in-toto.io/predicate-type"
# Config media types of runnable images; any other config (the empty one of OCI 1.1, an SBOM's ...) is an artifact.
IMAGE_CONFIGS = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")


def _platform(p: Any) -> str | None:
    if not isinstance(p, dict):
        return None
    os_, arch = p.get("os"), p.get("architecture")
    if not isinstance(os_, str) or not isinstance(arch, str):
        return None
    v = p.get("variant")
    return f"{os_}/{arch}" + (f"/{v}" if isinstance(v, str) and v else "")


def _is_attestation(desc: dict[str, Any]) -> bool:
    ann = desc.get("annotations") or {}
    return _platform(desc.get("platform")) == "unknown/unknown" or (
        isinstance(ann, dict) and ann.get("vnd.docker.reference.type") == "attestation-manifest")


def _refs(ann: Any) -> list[str]:
    if not isinstance(ann, dict):
        return []
    out = []
    for key in (IMAGE_NAME, REF_NAME):
        v = ann.get(key)
        if isinstance(v, str) and v and v not in out:
            out.append(v)
    return out


def parse_index_json(reader: MemberReader) -> tuple[list[ImageDesc], list[ArtifactDesc]]:
    """Describe every image reachable from index.json, and apart from them every attestation and artifact."""
    doc = load_json(reader.read("index.json"), "index.json")
    images: list[ImageDesc] = []
    artifacts: list[ArtifactDesc] = []
    _walk_index(reader, doc, "index.json", [], None, (images, artifacts), set(), 0)
    return images, artifacts


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _artifact(desc: dict[str, Any], body: dict[str, Any], refs: list[str]) -> ArtifactDesc | None:
    """The artifact a manifest is (buildx attestation, OCI 1.1 artifact), or None for a runnable image."""
    ann = desc.get("annotations") if isinstance(desc.get("annotations"), dict) else {}
    config = body.get("config") if isinstance(body.get("config"), dict) else {}
    config_type = _str(config.get("mediaType"))
    subject = body.get("subject") if isinstance(body.get("subject"), dict) else {}
    artifact_type = _str(body.get("artifactType")) or _str(desc.get("artifactType"))
    if _is_attestation(desc):
        kind, described = "attestation", _str(ann.get(REFERENCE_DIGEST)) or _str(subject.get("digest"))
    elif artifact_type or (config_type is not None and config_type not in IMAGE_CONFIGS):
        kind, described = "artifact", _str(subject.get("digest"))
    else:
        return None
    blobs = []
    for ld in body.get("layers") or []:
        if isinstance(ld, dict) and isinstance(ld.get("digest"), str):
            la = ld.get("annotations") if isinstance(ld.get("annotations"), dict) else {}
            size = ld.get("size")
            blobs.append((LayerDesc(member=blob_path(ld["digest"]), digest=ld["digest"],
                                    media_type=_str(ld.get("mediaType")),
                                    size=size if isinstance(size, int) else None), _str(la.get(PREDICATE_TYPE))))
    return ArtifactDesc(kind, desc["digest"], artifact_type or config_type, described, blobs, refs)


def _walk_index(reader: MemberReader, doc: Any, what: str, refs: list[str], platform: str | None,
                out: tuple[list[ImageDesc], list[ArtifactDesc]], seen: set[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise FormatError(f"{what}: image indexes nested more than {MAX_DEPTH} deep")
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise FormatError(f"{what} is not an image index (no 'manifests' list)")
    for n, desc in enumerate(doc["manifests"]):
        if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
            raise FormatError(f"{what}: manifests[{n}] has no digest")
        digest = desc["digest"]
        if digest in seen:
            raise FormatError(f"{what}: manifest {digest} refers back to itself (a cycle)")
        member = blob_path(digest)
        if not reader.exists(member) and _is_attestation(desc):  # docker save may leave attestations out
            out[1].append(_artifact(desc, {}, refs))  # type: ignore[arg-type]
            continue
        if not reader.exists(member):
            raise FormatError(f"{what}: manifest blob {digest} is missing from the archive")
        body = load_json(reader.read(member), member)
        if not isinstance(body, dict):
            raise FormatError(f"{member} is not a JSON object")
        my_refs = _refs(desc.get("annotations")) or refs
        my_platform = _platform(desc.get("platform")) or platform
        if isinstance(body.get("manifests"), list) and not _is_attestation(desc):
            _walk_index(reader, body, member, my_refs, my_platform, out, seen | {digest}, depth + 1)
            continue
        artifact = _artifact(desc, body, my_refs)
        if artifact is not None:
            out[1].append(artifact)
        elif isinstance(body.get("layers"), list) and isinstance(body.get("config"), dict):
            out[0].append(_image(reader, body, member, digest, my_refs, my_platform))
        else:
            raise FormatError(f"{member}: unknown document (media type {desc.get('mediaType')!r})")


def _image(reader: MemberReader, manifest: dict[str, Any], member: str, digest: str,
           refs: list[str], platform: str | None, path_of: Callable[[str], str] = blob_path) -> ImageDesc:
    """One image manifest described; `path_of` says where a digest's blob lies (blobs/<alg>/<hex> in OCI)."""
    cfg_desc = manifest["config"]
    cfg_digest = cfg_desc.get("digest")
    if not isinstance(cfg_digest, str):
        raise FormatError(f"{member}: config has no digest")
    cfg_member = path_of(cfg_digest)
    cfg_bytes, config = read_config(reader, cfg_member,
                                    f"{member}: config blob {cfg_digest} is missing from the archive")
    layer_ids = diff_ids(config)
    layers = []
    for i, ld in enumerate(manifest["layers"]):
        if not isinstance(ld, dict) or not isinstance(ld.get("digest"), str):
            raise FormatError(f"{member}: layers[{i}] has no digest")
        size = ld.get("size")
        layers.append(LayerDesc(
            member=path_of(ld["digest"]),
            digest=ld["digest"],
            diff_id=layer_ids[i] if i < len(layer_ids) else None,
            media_type=ld.get("mediaType") if isinstance(ld.get("mediaType"), str) else None,
            size=size if isinstance(size, int) else None,
        ))
    img = ImageDesc(
        refs=list(refs),
        config_member=cfg_member,
        config_bytes=cfg_bytes,
        config=config,
        layers=layers,
        source="index.json",
        digest=digest,
        config_digest=cfg_digest,
        manifest_bytes=reader.read(member),
        platform=platform or config_platform(config),
    )
    if len(layer_ids) != len(layers):
        img.warnings.append(f"config lists {len(layer_ids)} diff_ids but the manifest lists {len(layers)} layers")
    return img


def parse_single_manifest(reader: MemberReader) -> tuple[list[ImageDesc], list[ArtifactDesc]]:
    """skopeo's dir: layout: manifest.json is the manifest of one image, and each blob a file named by its hex."""
    data = reader.read("manifest.json")
    body = load_json(data, "manifest.json")
    if not isinstance(body, dict) or not isinstance(body.get("layers"), list) \
            or not isinstance(body.get("config"), dict):
        raise FormatError("manifest.json is neither a list of images (docker save) nor one image manifest "
                          "(skopeo dir:): a manifest list or a schema 1 manifest is not supported here")
    import hashlib  # here: only this layout needs the manifest's digest computed

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return [_image(reader, body, "manifest.json", digest, [], None, _dir_blob)], []


def _dir_blob(digest: str) -> str:
    """Where skopeo's dir: layout keeps a blob: a file named by the digest's hex part."""
    return blob_path(digest).rpartition("/")[2]
