"""What the format parsers produce: plain descriptions of images and their layer blobs."""

from __future__ import annotations

import json
from typing import Any, Protocol

from ..errors import FormatError
from ..stores.base import MAX_JSON

__all__ = ["MAX_JSON"]  # formats speak of it; the stores enforce it


class MemberReader(Protocol):
    """Read access to the members of the outer archive, by path."""

    def exists(self, path: str) -> bool:
        """Whether a member (after following archive symlinks) exists."""
        ...

    def read(self, path: str) -> bytes:
        """The bytes of a member (after following archive symlinks)."""
        ...


# Plain classes, not dataclasses: importing dataclasses (and with it inspect) costs every command ~15 ms.
class LayerDesc:
    """One layer blob as the manifest names it."""

    __slots__ = ("member", "digest", "diff_id", "media_type", "size")

    def __init__(self, member: str, digest: str | None = None, diff_id: str | None = None,
                 media_type: str | None = None, size: int | None = None) -> None:
        self.member, self.digest, self.diff_id, self.media_type, self.size = member, digest, diff_id, media_type, size

    def __repr__(self) -> str:
        return f"LayerDesc({self.member!r}, digest={self.digest!r}, diff_id={self.diff_id!r})"


class ImageDesc:
    """One image of an archive: its names, config, platform and layers, bottom first."""

    def __init__(self, refs: list[str], config_member: str, config_bytes: bytes, config: dict[str, Any],
                 layers: list[LayerDesc], source: str, digest: str | None = None, config_digest: str | None = None,
                 manifest_bytes: bytes | None = None, platform: str | None = None,
                 warnings: list[str] | None = None) -> None:
        self.refs, self.config_member, self.config_bytes, self.config = refs, config_member, config_bytes, config
        self.layers, self.source, self.digest, self.config_digest = layers, source, digest, config_digest
        self.manifest_bytes, self.platform = manifest_bytes, platform
        self.warnings: list[str] = warnings if warnings is not None else []

    def __repr__(self) -> str:
        return f"ImageDesc(refs={self.refs!r}, config_member={self.config_member!r}, platform={self.platform!r})"


class ArtifactDesc:
    """A manifest that is not a runnable image: a buildx attestation, or an OCI 1.1 artifact (SBOM, signature).

    `kind` is "attestation" or "artifact"; `artifact_type` its artifactType, else its config's media type;
    `subject` the manifest digest of the image it describes (OCI `subject`, or buildx's
    `vnd.docker.reference.digest`); `blobs` its layers with the in-toto predicate type each declares.
    """

    def __init__(self, kind: str, digest: str, artifact_type: str | None, subject: str | None,
                 blobs: list[tuple[LayerDesc, str | None]], refs: list[str] | None = None) -> None:
        self.kind, self.digest, self.artifact_type, self.subject = kind, digest, artifact_type, subject
        self.blobs = blobs
        self.refs: list[str] = refs or []

    def __repr__(self) -> str:
        return f"ArtifactDesc({self.kind!r}, {self.digest!r}, type={self.artifact_type!r}, subject={self.subject!r})"


def load_json(data: bytes, what: str) -> Any:
    """Parse JSON, turning every failure into a FormatError that names `what`."""
    if len(data) > MAX_JSON:
        raise FormatError(f"{what} is {len(data)} bytes, larger than {MAX_JSON}")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise FormatError(f"{what} is not valid JSON: {e}") from None


def read_config(reader: MemberReader, member: str, missing: str) -> tuple[bytes, dict[str, Any]]:
    """An image config member: its bytes and its JSON object; FormatError `missing` when it is absent."""
    if not reader.exists(member):
        raise FormatError(missing)
    data = reader.read(member)
    config = load_json(data, member)
    if not isinstance(config, dict):
        raise FormatError(f"{member} is not a JSON object")
    return data, config


def diff_ids(config: dict[str, Any]) -> list[str]:
    """rootfs.diff_ids of a config, bottom layer first ("" where an entry is not a string)."""
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        return []
    return [d if isinstance(d, str) else "" for d in ids]


def blob_path(digest: str) -> str:
    """The member path of a digest in an OCI layout: blobs/<alg>/<hex>."""
    alg, sep, hexpart = digest.partition(":")
    if not sep or not alg.isalnum() or not hexpart or "/" in hexpart or ".." in hexpart:
        raise FormatError(f"malformed digest {digest!r}")
    return f"blobs/{alg}/{hexpart}"


def config_platform(config: dict[str, Any]) -> str | None:
    """os/arch[/variant] from an image config, if it says."""
    os_, arch = config.get("os"), config.get("architecture")
    if not isinstance(os_, str) or not isinstance(arch, str):
        return None
    variant = config.get("variant")
    return f"{os_}/{arch}" + (f"/{variant}" if isinstance(variant, str) and variant else "")
