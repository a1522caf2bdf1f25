"""The statements attached to an image (buildx attestations, OCI 1.1 referrers), as named files."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import FormatError
from .model import ArtifactDesc, MemberReader, load_json

IN_TOTO = "application/vnd.in-toto+json"
# Predicate types (a prefix, so that every version matches) -> the file name their statement gets.
PREDICATE_NAMES = [
    ("https://spdx.dev/Document", "sbom.spdx.json"),
    ("https://cyclonedx.org/bom", "sbom.cyclonedx.json"),
    ("https://slsa.dev/provenance/", "provenance.json"),
    ("https://in-toto.io/attestation/vulns", "vulns.json"),
]
# Media types of artifact blobs that carry no predicate type -> their file name.
MEDIA_NAMES = {
    "application/spdx+json": "sbom.spdx.json",
    "application/vnd.cyclonedx+json": "sbom.cyclonedx.json",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def statement_name(predicate_type: str | None, media_type: str | None, digest: str) -> str:
    """A file name for one statement: by its predicate type, else by its media type, else by its digest."""
    if predicate_type:
        for prefix, name in PREDICATE_NAMES:
            if predicate_type.startswith(prefix):
                return name
        bare = predicate_type.split("://", 1)[-1].strip("/")
        return (_UNSAFE.sub("_", bare)[:200] or "statement") + ".json"
    if media_type in MEDIA_NAMES:
        return MEDIA_NAMES[media_type]
    ext = ".json" if media_type and media_type.endswith("json") else ""
    return digest.partition(":")[2][:12] + ext


def _predicate_of(data: bytes, media_type: str | None) -> str | None:
    """An in-toto statement's predicateType, read from the statement itself."""
    if media_type != IN_TOTO:
        return None
    try:
        doc = load_json(data, "statement")
    except FormatError:
        return None
    value = doc.get("predicateType") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def attestation_files(artifacts: list[ArtifactDesc], subject: str | None, reader: MemberReader,
                      warn: Callable[[str], None] | None = None) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every statement of the artifacts describing the manifest `subject`.

    A blob the place does not hold is left out; `warn(message)` hears of it. Names are made distinct
    with a counter (`provenance-2.json`).
    """
    out: list[tuple[str, bytes]] = []
    taken: set[str] = set()
    for art in artifacts:
        if subject is None or art.subject != subject:
            continue
        for ld, predicate in art.blobs:
            try:
                data = reader.read(ld.member)
            except FormatError as e:
                if warn is not None:
                    warn(f"{art.kind} {art.digest}: {e}")
                continue
            name = statement_name(predicate or _predicate_of(data, ld.media_type), ld.media_type, ld.digest or "")
            stem, dot, ext = name.partition(".")
            k = 2
            while name in taken:
                name = f"{stem}-{k}{dot}{ext}"
                k += 1
            taken.add(name)
            out.append((name, data))
    return out
