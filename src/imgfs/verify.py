"""Check an image's blobs against their digests and its layers against their diff_ids (opt-in: it hashes)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable

from .archive import Image
from .errors import ImgfsError
from .tarindex import Source

_CHUNK = 4 << 20


class Check:
    """One comparison: what was checked, the digest expected, the digest found, and whether they agree."""

    def __init__(self, what: str, expected: str | None, actual: str | None, ok: bool, error: str | None = None) -> None:
        self.what, self.expected, self.actual, self.ok, self.error = what, expected, actual, ok, error

    def __repr__(self) -> str:
        return f"Check({self.what!r}, ok={self.ok}, error={self.error!r})"


def _hash(src: Source, algorithm: str, progress: Callable[[int, int], None] | None) -> str:
    h = hashlib.new(algorithm)
    size = src.size
    off = 0
    while off < size:
        n = min(_CHUNK, size - off)
        h.update(src.pread(off, n))
        off += n
        if progress is not None:
            progress(off, size)
    return f"{algorithm}:{h.hexdigest()}"


def _check(what: str, expected: str | None, src: Callable[[], Source],
           progress: Callable[[int, int], None] | None) -> Check:
    if not expected or ":" not in expected:
        return Check(what, expected, None, False, "no digest recorded to check against")
    algorithm = expected.split(":", 1)[0]
    if algorithm not in ("sha256", "sha384", "sha512"):
        return Check(what, expected, None, False, f"unsupported digest algorithm {algorithm!r}")
    try:
        actual = _hash(src(), algorithm, progress)
    except (ImgfsError, OSError) as e:
        return Check(what, expected, None, False, str(e))
    return Check(what, expected, actual, actual == expected)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def pread(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


def verify_image(image: Image, progress: Callable[[str, int, int], None] | None = None) -> list[Check]:
    """Hash the config, the manifest and every layer (blob and uncompressed stream) of one image."""
    checks: list[Check] = []
    desc = image.desc
    archive = image.archive

    def prog(what: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, total: progress(what, done, total))

    if desc.config_digest and desc.source != "manifest.json":
        checks.append(_check("config", desc.config_digest, lambda: _Bytes(desc.config_bytes), None))
    elif desc.config_member.endswith(".json") or desc.config_member.startswith("blobs/"):
        # docker-archive names the config after its digest: <hex>.json or blobs/sha256/<hex>
        stem = desc.config_member.rsplit("/", 1)[-1].removesuffix(".json")
        checks.append(_check("config", f"sha256:{stem}", lambda: _Bytes(desc.config_bytes), None))
    if desc.digest and desc.manifest_bytes is not None:
        checks.append(_check("manifest", desc.digest, lambda: _Bytes(desc.manifest_bytes or b""), None))
    for layer in image.layers:
        tag = f"layer {layer.number}"
        compressed = None
        try:
            compressed = layer.compression
        except ImgfsError as e:
            checks.append(Check(f"{tag} blob", layer.digest, None, False, str(e)))
            continue
        if compressed and layer.digest:
            checks.append(_check(f"{tag} blob ({compressed})", layer.digest,
                                 lambda la=layer: archive.blobs.open(la.member), prog(f"{tag} blob")))
        checks.append(_check(f"{tag} diff_id", layer.diff_id, layer.source, prog(f"{tag} diff_id")))
        if checks[-1].ok:  # loading the index checks its cached copy: a damaged one is rebuilt, with a warning
            with contextlib.suppress(ImgfsError):
                layer.index()
    return checks
