"""OCI image layout: index.json, nested image indexes, manifests, several platforms."""

from __future__ import annotations

from typing import Any

from ..errors import FormatError
from .model import ImageDesc, LayerDesc, MemberReader, blob_path, config_platform, diff_ids, load_json, read_config

MAX_DEPTH = 8
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"


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


def parse_index_json(reader: MemberReader) -> list[ImageDesc]:
    """Describe every image reachable from index.json (attestations left out)."""
    doc = load_json(reader.read("index.json"), "index.json")
    images: list[ImageDesc] = []
    _walk_index(reader, doc, "index.json", [], None, images, set(), 0)
    return images


def _walk_index(reader: MemberReader, doc: Any, what: str, refs: list[str], platform: str | None,
                out: list[ImageDesc], seen: set[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise FormatError(f"{what}: image indexes nested more than {MAX_DEPTH} deep")
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise FormatError(f"{what} is not an image index (no 'manifests' list)")
    for n, desc in enumerate(doc["manifests"]):
        if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
            raise FormatError(f"{what}: manifests[{n}] has no digest")
        if _is_attestation(desc):
            continue
        digest = desc["digest"]
        if digest in seen:
            raise FormatError(f"{what}: manifest {digest} refers back to itself (a cycle)")
        member = blob_path(digest)
        if not reader.exists(member):
            raise FormatError(f"{what}: manifest blob {digest} is missing from the archive")
        body = load_json(reader.read(member), member)
        if not isinstance(body, dict):
            raise FormatError(f"{member} is not a JSON object")
        my_refs = _refs(desc.get("annotations")) or refs
        my_platform = _platform(desc.get("platform")) or platform
        if isinstance(body.get("manifests"), list):
            _walk_index(reader, body, member, my_refs, my_platform, out, seen | {digest}, depth + 1)
        elif isinstance(body.get("layers"), list) and isinstance(body.get("config"), dict):
            out.append(_image(reader, body, member, digest, my_refs, my_platform))
        else:
            raise FormatError(f"{member}: unknown document (media type {desc.get('mediaType')!r})")


def _image(reader: MemberReader, manifest: dict[str, Any], member: str, digest: str,
           refs: list[str], platform: str | None) -> ImageDesc:
    cfg_desc = manifest["config"]
    cfg_digest = cfg_desc.get("digest")
    if not isinstance(cfg_digest, str):
        raise FormatError(f"{member}: config has no digest")
    cfg_member = blob_path(cfg_digest)
    cfg_bytes, config = read_config(reader, cfg_member,
                                    f"{member}: config blob {cfg_digest} is missing from the archive")
    layer_ids = diff_ids(config)
    layers = []
    for i, ld in enumerate(manifest["layers"]):
        if not isinstance(ld, dict) or not isinstance(ld.get("digest"), str):
            raise FormatError(f"{member}: layers[{i}] has no digest")
        size = ld.get("size")
        layers.append(LayerDesc(
            member=blob_path(ld["digest"]),
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
