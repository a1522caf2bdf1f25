"""An image tarball on disk (docker save, podman save, OCI archive; optionally gzipped whole) as a blob store."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import FormatError
from ..tarindex import FileSource, MemberIndex, Source, scan
from ..tarindex.compressed import open_stream
from ..tarindex.reader import HARDLINK, MAX_LINK_HOPS, SYMLINK, normalize
from ..tarindex.source import SliceSource
from ..tarindex.sparse import SparseSource
from ..tarindex.store import Store
from .base import MAX_JSON


class TarballStore:
    """Members of the outer tar by path, following the archive's own symlinks and hard links.

    The outer tar is indexed once (headers only); a gzipped whole archive is read through seek points
    kept in the cache under this very file's identity.
    """

    def __init__(self, path: str, *, ref: str | None = None, cache: Store | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.name = path
        self.ref = ref
        self.file = FileSource(path)
        if self.file.size == 0:
            self.file.close()
            raise FormatError("is empty, not an image archive")
        # Seek points of a whole-archive gzip depend on this very file: key them by its identity (device,
        # inode, size, mtime, ctime, a hash of its first and last blocks).
        self.identity = f"file:{os.path.abspath(path)}:" + ":".join(map(str, self.file.identity))

        def report(what: str) -> Callable[[int, int], None] | None:
            return None if progress is None else (lambda done, total: progress(what, done, total))

        try:
            self.outer, compression = open_stream(self.file, cache, self.identity, report("decompressing archive"))
            try:
                self.index: MemberIndex = scan(self.outer, report("reading archive"))
            except FormatError as e:  # the scanner's header-level reason means nothing for, say, a random .gz
                if not str(e).startswith("not a tar archive"):
                    raise
                inside = f"its {compression} data is" if compression else "it is"
                raise FormatError(f"not a container image archive: {inside} not a tar file") from None
        except BaseException:
            self.file.close()
            raise
        self.kind_suffix = "+" + compression if compression else ""
        self.damage = self.index.error
        self.by_name = {name: i for i, name in enumerate(self.index.names)}

    def member(self, path: str) -> int | None:
        """The index of the member at `path` after following the archive's links, or None."""
        key: bytes | None = normalize(path.encode("utf-8", "surrogateescape"))
        for _ in range(MAX_LINK_HOPS):
            if key is None:
                return None
            i = self.by_name.get(key)
            if i is None:
                return None
            k = self.index.kinds[i]
            if k == SYMLINK:  # legacy docker save: <id>/layer.tar -> ../<id2>/layer.tar
                target = self.index.links.get(i, b"")
                base = b"" if target.startswith(b"/") else key.rpartition(b"/")[0]
                key = normalize(base + b"/" + target if base else target)
            elif k == HARDLINK:
                key = normalize(self.index.links.get(i, b""))
            else:
                return i
        return None

    def exists(self, path: str) -> bool:
        """Whether a member (after following archive links) exists."""
        return self.member(path) is not None

    def open(self, path: str) -> SliceSource | SparseSource:
        """The member's bytes, in place in the archive (or its decompressed stream)."""
        i = self.member(path)
        if i is None:
            raise FormatError(f"{path} is missing from the archive")
        offset, size = self.index.offsets[i], self.index.sizes[i]
        sparse = self.index.sparse.get(i)
        if sparse is not None and i not in self.index.broken:
            return SparseSource(self.outer, sparse, size)
        if offset + size > self.outer.size and sparse is None:
            # Cut by the end of a truncated archive: what is there is served, so that a layer keeps its
            # complete members (its own scan marks the cut one broken and says so).
            size = self.outer.size - offset
        elif self.index.broken.get(i):
            raise FormatError(f"{path}: {self.index.broken[i]}")
        return SliceSource(self.outer, offset, size)

    def read(self, path: str) -> bytes:
        """A small member whole; refused by its size before it is read."""
        s = self.open(path)
        if s.size > MAX_JSON:  # only JSON documents are read whole: refuse before reading, not after
            raise FormatError(f"{path} is {s.size} bytes, larger than any manifest or config ({MAX_JSON})")
        return s.pread(0, s.size)

    def origin(self, path: str) -> str:
        """This very archive file (path, device, inode, size, times) and the member's offset in it."""
        i = self.member(path)
        if i is None:
            raise FormatError(f"{path} is missing from the archive")
        return f"{self.identity}@{self.index.offsets[i]}"

    def close(self) -> None:
        """Close the archive file and any decompressed copy of it."""
        src: Source = self.outer
        close = getattr(src, "close", None)
        if close and src is not self.file:
            close()
        self.file.close()
