"""A read-only filesystem tree over tar members: lookup, listing, link resolution and reads."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import NamedTuple

from ..errors import FormatError, NotFoundError
from ..tarindex.reader import BLOCKDEV, CHAR, DIR, FIFO, FILE, KIND_NAMES, SYMLINK, MemberIndex
from ..tarindex.source import FileSource, SliceSource, Source

SHIFT = 32
MASK = (1 << SHIFT) - 1
ROOT_INO = 1
_IMPLIED_INO_BASE = 1 << 62
_S_IFMT = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, CHAR: stat.S_IFCHR,
           BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}
MAX_LINK_HOPS = 40


class Entry(NamedTuple):
    """What a tree knows about one path (made on demand, never stored)."""

    path: bytes
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    nlink: int
    ino: int
    ref: int
    linkname: bytes | None = None
    device: tuple[int, int] | None = None

    @property
    def st_mode(self) -> int:
        """Type bits and permission bits, as stat() gives them."""
        return _S_IFMT[_KIND_CODES[self.kind]] | self.mode

    @property
    def display_path(self) -> str:
        """The path from the root, with undecodable bytes escaped."""
        return "/" + self.path.decode("utf-8", "backslashreplace")


_KIND_CODES = {v: k for k, v in KIND_NAMES.items()}


def split_path(path: bytes | str) -> bytes:
    """Normalise a user path ('/a//b/', 'a/b') to a tree key (b'a/b'; b'' is the root)."""
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogateescape")
    parts = [p for p in path.split(b"/") if p and p != b"."]
    out: list[bytes] = []
    for p in parts:
        if p == b"..":
            if out:
                out.pop()
        else:
            out.append(p)
    return b"/".join(out)


class Tree:
    """Paths mapped to member references (layer << 32 | member); negative refs are implied dirs."""

    def __init__(self, indexes: list[MemberIndex | None], sources: list[Source | None],
                 nodes: dict[bytes, int], children: dict[bytes, tuple[bytes, ...]],
                 nlinks: dict[int, int], warnings: list[str]) -> None:
        self.indexes = indexes
        self.sources = sources
        self.nodes = nodes
        self.children = children
        self.nlinks = nlinks
        self.warnings = warnings

    def __len__(self) -> int:
        return len(self.nodes)

    # -- metadata -------------------------------------------------------------------------
    def kind_code(self, ref: int) -> int:
        """The tar kind byte of a reference (implied directories are DIR)."""
        if ref < 0:
            return DIR
        return self.indexes[ref >> SHIFT].kinds[ref & MASK]  # type: ignore[union-attr]

    def lookup(self, path: bytes | str) -> int | None:
        """The reference stored at `path` (no link following), or None."""
        return self.nodes.get(split_path(path))

    def entry(self, path: bytes | str) -> Entry | None:
        """The Entry at `path` (no link following), or None."""
        key = split_path(path)
        ref = self.nodes.get(key)
        return None if ref is None else self.entry_for(key, ref)

    def entry_for(self, key: bytes, ref: int) -> Entry:
        """Build the Entry of a known (path, reference) pair."""
        if ref < 0:
            ino = ROOT_INO if key == b"" else _IMPLIED_INO_BASE - ref
            return Entry(key, "dir", 0o755, 0, 0, 0, 0.0, 2, ino, ref)
        idx = self.indexes[ref >> SHIFT]
        i = ref & MASK
        assert idx is not None
        k = idx.kinds[i]
        return Entry(
            path=key, kind=KIND_NAMES[k], mode=idx.modes[i], uid=idx.uids[i], gid=idx.gids[i],
            size=idx.sizes[i] if k == FILE else (len(idx.links.get(i, b"")) if k == SYMLINK else 0),
            mtime=idx.mtime(i), nlink=self.nlinks.get(ref, 1) if k == FILE else (2 if k == DIR else 1),
            ino=ROOT_INO if key == b"" else ref + 2, ref=ref,
            linkname=idx.links.get(i) if k == SYMLINK else None,
            device=idx.devices.get(i),
        )

    def stat(self, ref: int) -> tuple[int, int, int, int, int, int, float]:
        """(st_mode, nlink, uid, gid, rdev, size, mtime) of a reference: entry_for's facts without an Entry.

        The hot path of a mount (every lookup); tests hold the two equal on every fixture.
        """
        if ref < 0:
            return stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, 0.0
        i = ref & MASK
        idx = self.indexes[ref >> SHIFT]
        assert idx is not None
        k = idx.kinds[i]
        rdev = 0
        if k == FILE:
            size, nlink = idx.sizes[i], self.nlinks.get(ref, 1)
        elif k == DIR:
            size, nlink = 0, 2
        elif k == SYMLINK:
            size, nlink = len(idx.links.get(i, b"")), 1
        else:
            dev = idx.devices.get(i)
            size, nlink = 0, 1
            if dev and k != FIFO:
                rdev = os.makedev(*dev)
        return _S_IFMT[k] | idx.modes[i], nlink, idx.uids[i], idx.gids[i], rdev, size, idx.mtime(i)

    def extent(self, ref: int) -> tuple[int, int, int] | None:
        """(fd, offset, size) when a file's bytes lie as they are in a plain file (an uncompressed layer).

        Lets a caller read them straight from the archive (zero-copy); None means: use read().
        """
        if ref < 0:
            return None
        li, i = ref >> SHIFT, ref & MASK
        idx, src = self.indexes[li], self.sources[li]
        if idx is None or i in idx.broken:
            return None
        base = idx.offsets[i]
        while isinstance(src, SliceSource):
            base += src.base
            src = src.parent
        if not isinstance(src, FileSource) or src.fd < 0:
            return None
        return src.fd, base, idx.sizes[i]

    def xattrs(self, ref: int) -> dict[str, bytes]:
        """Extended attributes recorded for a member (PAX SCHILY/LIBARCHIVE)."""
        if ref < 0:
            return {}
        idx = self.indexes[ref >> SHIFT]
        return idx.xattrs.get(ref & MASK, {}) if idx is not None else {}

    # -- directories ----------------------------------------------------------------------
    def listdir(self, path: bytes | str) -> list[bytes]:
        """Names in a directory, sorted; NotFoundError if it is not a directory."""
        key = split_path(path)
        ref = self.nodes.get(key)
        if ref is None or self.kind_code(ref) != DIR:
            raise NotFoundError(f"not a directory: /{key.decode('utf-8', 'backslashreplace')}")
        cut = len(key) + 1 if key else 0
        return [c[cut:] for c in self.children.get(key, ())]

    def child_paths(self, key: bytes) -> tuple[bytes, ...]:
        """Full paths of a directory's children, sorted."""
        return self.children.get(key, ())

    def walk(self, top: bytes | str = b"") -> Iterator[tuple[bytes, int]]:
        """Every (path, reference) under `top`, depth first, sorted, `top` included."""
        key = split_path(top)
        ref = self.nodes.get(key)
        if ref is None:
            return
        stack = [(key, ref)]
        nodes, children = self.nodes, self.children
        while stack:
            p, r = stack.pop()
            yield p, r
            kids = children.get(p)
            if kids:
                stack.extend((c, nodes[c]) for c in reversed(kids))

    # -- links ----------------------------------------------------------------------------
    def resolve(self, path: bytes | str, follow_last: bool = True) -> bytes | None:
        """Follow symlinks inside the image root (never above it); None when dangling."""
        parts = [p for p in split_path(path).split(b"/") if p]
        cur: list[bytes] = []
        hops = 0
        while parts:
            comp = parts.pop(0)
            if comp == b"..":
                if cur:
                    cur.pop()
                continue
            cand = b"/".join(cur + [comp])
            ref = self.nodes.get(cand)
            if ref is None:
                return None
            if self.kind_code(ref) == SYMLINK and (parts or follow_last):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    return None
                idx = self.indexes[ref >> SHIFT]
                target = idx.links.get(ref & MASK, b"") if idx else b""
                if target.startswith(b"/"):
                    cur = []
                parts = [p for p in target.split(b"/") if p and p != b"."] + parts
                continue
            cur.append(comp)
        return b"/".join(cur)

    def file(self, path: bytes | str) -> int:
        """The reference of the regular file at `path` (symlinks followed inside the root); NotFoundError if none."""
        key = self.resolve(path)
        ref = self.nodes.get(key) if key is not None else None
        shown = split_path(path).decode("utf-8", "backslashreplace")
        if ref is None:
            raise NotFoundError(f"/{shown}: no such file")
        if self.kind_code(ref) != FILE:
            raise NotFoundError(f"/{shown}: not a regular file")
        return ref

    # -- content --------------------------------------------------------------------------
    def read(self, ref: int, offset: int, size: int) -> bytes:
        """Up to `size` bytes of a regular file's content from `offset`."""
        if ref < 0:
            return b""
        li, i = ref >> SHIFT, ref & MASK
        idx, src = self.indexes[li], self.sources[li]
        if idx is None or src is None:
            raise FormatError("the layer holding this file cannot be read")
        reason = idx.broken.get(i)
        if reason:
            raise FormatError(f"/{idx.names[i].decode('utf-8', 'backslashreplace')}: {reason}")
        length = idx.sizes[i]
        if offset < 0:
            raise ValueError("negative read offset")
        if offset >= length or size <= 0:
            return b""
        return src.pread(idx.offsets[i] + offset, min(size, length - offset))

    def read_all(self, ref: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """A file's whole content, in chunks."""
        size = self.entry_for(b"?", ref).size if ref >= 0 else 0
        off = 0
        while off < size:
            data = self.read(ref, off, chunk)
            if not data:
                break
            yield data
            off += len(data)
