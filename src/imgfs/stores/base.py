"""The protocol every store of blobs implements (an image tarball, a directory, a registry)."""

from __future__ import annotations

from typing import Protocol

from ..tarindex import Source

MAX_JSON = 64 << 20  # a manifest, index or config larger than this is refused


class BlobStore(Protocol):
    """Blobs and documents of one place holding images, by path in the format parsers' namespace.

    `name` is what the user named (for messages); `ref` the image that name picked, if it picked one
    (`oci:DIR:tag`); `kind_suffix` is added to the format's kind (`+gzip` for a gzipped tarball); `damage`
    says why the place is only partly readable (a truncated tarball), or is None.
    """

    name: str
    ref: str | None
    kind_suffix: str
    damage: str | None

    def exists(self, path: str) -> bool:
        """Whether `path` is there."""
        ...

    def read(self, path: str) -> bytes:
        """The whole of a small document (a manifest, an index, a config); FormatError past MAX_JSON."""
        ...

    def open(self, path: str) -> Source:
        """Random access to the bytes at `path` as stored (still compressed if the blob is)."""
        ...

    def origin(self, path: str) -> str:
        """A key for the cache naming these very bytes: where they sit and the identity of what holds them."""
        ...

    def close(self) -> None:
        """Release what the store holds open."""
        ...
