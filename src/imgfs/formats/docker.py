"""docker-archive: manifest.json from `docker save` (legacy and >= 25) and `podman save`."""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import FormatError
from .model import ImageDesc, LayerDesc, MemberReader, config_platform, diff_ids, load_json, read_config


def _clean(path: str) -> str:
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def parse_manifest_json(reader: MemberReader) -> list[ImageDesc]:
    """Describe every image listed in manifest.json."""
    doc = load_json(reader.read("manifest.json"), "manifest.json")
    if not isinstance(doc, list):
        raise FormatError("manifest.json is not a list of images")
    images = []
    for n, entry in enumerate(doc):
        if not isinstance(entry, dict):
            raise FormatError(f"manifest.json entry {n} is not an object")
        cfg_member = entry.get("Config")
        layers = entry.get("Layers")
        if not isinstance(cfg_member, str) or not isinstance(layers, list):
            raise FormatError(f"manifest.json entry {n} lacks Config or Layers")
        cfg_member = _clean(cfg_member)
        cfg_bytes, config = read_config(
            reader, cfg_member, f"manifest.json entry {n}: config {cfg_member} is missing from the archive")
        layer_ids = diff_ids(config)
        sources: dict[str, Any] = entry.get("LayerSources") or {}
        descs = []
        for i, layer in enumerate(layers):
            if not isinstance(layer, str):
                raise FormatError(f"manifest.json entry {n}: layer {i} is not a path")
            diff_id = layer_ids[i] if i < len(layer_ids) else None
            src = sources.get(diff_id) if isinstance(sources, dict) and diff_id else None
            if not isinstance(src, dict):
                src = None
            member = _clean(layer)
            digest = None
            if member.startswith("blobs/"):
                parts = member.split("/")
                if len(parts) == 3:
                    digest = f"{parts[1]}:{parts[2]}"
            src = src or {}
            descs.append(LayerDesc(
                member=member,
                digest=src.get("digest") if isinstance(src.get("digest"), str) else digest,
                diff_id=diff_id,
                media_type=src.get("mediaType") if isinstance(src.get("mediaType"), str) else None,
                size=src.get("size") if isinstance(src.get("size"), int) else None,
            ))
        raw_tags = entry.get("RepoTags")
        tags = [t for t in raw_tags if isinstance(t, str)] if isinstance(raw_tags, list) else []
        img = ImageDesc(
            refs=tags,
            config_member=cfg_member,
            config_bytes=cfg_bytes,
            config=config,
            layers=descs,
            source="manifest.json",
            config_digest="sha256:" + hashlib.sha256(cfg_bytes).hexdigest(),
            platform=config_platform(config),
        )
        if len(layer_ids) != len(descs):
            img.warnings.append(
                f"config lists {len(layer_ids)} diff_ids but manifest.json lists {len(descs)} layers")
        images.append(img)
    return images


