"""Image formats: recognise an archive's layout from its members and describe its images."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ..errors import FormatError, SelectionError
from .docker import parse_manifest_json
from .model import ArtifactDesc, ImageDesc, LayerDesc, MemberReader, load_json
from .naming import layer_names, readable
from .oci import parse_index_json, parse_single_manifest
from .refs import normalize_ref, same_ref

__all__ = ["FORMATS", "ArtifactDesc", "Format", "ImageDesc", "LayerDesc", "MemberReader", "describe",
           "host_platform", "layer_names", "normalize_ref", "readable", "select_images"]

Parsed = tuple[list[ImageDesc], list[ArtifactDesc]]


class Format(NamedTuple):
    """A layout: its name, whether a place holds it (from its content), and how to describe its images."""

    kind: str
    probe: Callable[[MemberReader], bool]
    parse: Callable[[MemberReader], Parsed]


def _single_manifest(reader: MemberReader) -> bool:
    """skopeo's dir: layout: manifest.json is one JSON object, where docker save's is a list."""
    if not reader.exists("manifest.json"):
        return False
    try:
        return isinstance(load_json(reader.read("manifest.json"), "manifest.json"), dict)
    except FormatError:
        return False  # the docker parser names the problem


def _docker(reader: MemberReader) -> Parsed:
    return parse_manifest_json(reader), []


def _docker_oci(reader: MemberReader) -> Parsed:
    """docker save >= 25: manifest.json names the images; index.json adds digests, platforms, attestations."""
    images = parse_manifest_json(reader)
    try:
        oci, artifacts = parse_index_json(reader)
    except FormatError as e:  # manifest.json alone is enough to read the images
        for img in images:
            img.warnings.append(f"index.json ignored: {e}")
        return images, []
    _enrich(images, oci)
    return images, artifacts


# Tried in this order; the first whose probe says yes describes the place.
FORMATS: list[Format] = [
    Format("skopeo-dir", _single_manifest, parse_single_manifest),  # before docker: both have a manifest.json
    Format("docker-oci", lambda r: r.exists("manifest.json") and r.exists("index.json"), _docker_oci),
    Format("docker-archive", lambda r: r.exists("manifest.json"), _docker),
    Format("oci-archive", lambda r: r.exists("index.json"), parse_index_json),
]


def describe(reader: MemberReader) -> tuple[str, list[ImageDesc], list[ArtifactDesc]]:
    """Name the place's layout and describe every image in it, and apart from them every artifact."""
    for fmt in FORMATS:
        if fmt.probe(reader):
            images, artifacts = fmt.parse(reader)
            return fmt.kind, images, artifacts
    raise FormatError("not a container image archive or layout (neither manifest.json nor index.json is in it)")


def _enrich(images: list[ImageDesc], oci: list[ImageDesc]) -> None:
    """Give docker-archive images the manifest digest and platform that index.json records."""
    by_config = {o.config_digest: o for o in oci}
    for img in images:
        o = by_config.get(img.config_digest)
        if o is None:
            continue
        img.digest = o.digest
        img.manifest_bytes = o.manifest_bytes
        img.platform = o.platform or img.platform
        by_layer = {ld.diff_id: ld for ld in o.layers}
        for ld in img.layers:
            od = by_layer.get(ld.diff_id)
            if od is not None:
                ld.media_type = ld.media_type or od.media_type
                ld.digest = ld.digest or od.digest
        for r in o.refs:
            if r not in img.refs and ":" in r and "/" in r:
                img.refs.append(r)


def host_platform() -> str:
    """This machine's platform in OCI terms, e.g. linux/amd64."""
    import platform  # here, not at the top: every command imports this package, few need the host

    m = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm/v7", "armv6l": "arm/v6", "i686": "386", "i386": "386"}.get(m, m)
    return f"linux/{arch}"


def _platform_matches(have: str | None, want: str) -> bool:
    if have is None:
        return False
    h, w = have.split("/"), want.split("/")
    if h[:2] != w[:2]:
        return False
    return len(w) < 3 or (len(h) >= 3 and h[2] == w[2]) or (len(h) < 3 and w[2] in ("v8",))


def _ref_matches(img: ImageDesc, ref: str) -> bool:
    r = ref.removeprefix("sha256:")
    if len(r) >= 4 and all(c in "0123456789abcdef" for c in r):
        for d in (img.digest, img.config_digest):
            if d and d.removeprefix("sha256:").startswith(r):
                return True
    want = [ref] if ":" in ref.rsplit("/", 1)[-1] or "@" in ref else [ref, ref + ":latest"]
    for have in img.refs:
        if same_ref(have, ref):  # as Docker reads them: app = library/app = docker.io/library/app:latest
            return True
        for w in want:
            if have == w or have.endswith("/" + w):
                return True
    return False


def label(img: ImageDesc) -> str:
    """A short human name for an image: its first ref, else a digest prefix."""
    if img.refs:
        return img.refs[0]
    d = img.digest or img.config_digest or "image"
    return d.replace("sha256:", "")[:12]


def select_images(images: list[ImageDesc], ref: str | None = None, platform: str | None = None) -> list[ImageDesc]:
    """Filter images by ref and platform; without a platform prefer the host's per name."""
    chosen = images
    if ref:
        chosen = [i for i in images if _ref_matches(i, ref)]
        if not chosen:
            raise SelectionError("no image matches {image} {ref!r}; the archive has: {listing}", ref=ref,
                                 listing=", ".join(_describe(i) for i in images))
    if platform:
        picked = [i for i in chosen if _platform_matches(i.platform, platform)]
        if not picked:
            raise SelectionError("no image for {platform} {wanted!r}; available: {listing}", wanted=platform,
                                 listing=", ".join(_describe(i) for i in chosen))
        return picked
    groups: dict[tuple[str, ...], list[ImageDesc]] = {}
    for i in chosen:
        groups.setdefault(tuple(i.refs), []).append(i)
    host = host_platform()
    out = []
    for group in groups.values():
        if len(group) > 1 and len({i.platform for i in group}) > 1:
            native = [i for i in group if _platform_matches(i.platform, host)]
            out.extend(native or group)
        else:
            out.extend(group)
    return out


def _describe(img: ImageDesc) -> str:
    return label(img) + (f" [{img.platform}]" if img.platform else "")
