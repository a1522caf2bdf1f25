"""A read-only filesystem tree over tar members: lookup, listing, link resolution and reads."""

from __future__ import annotations

import os
import stat
import threading
from array import array
from collections.abc import Iterator, Mapping
from typing import NamedTuple

from ..errors import FormatError, NotFoundError
from ..tarindex.reader import BLOCKDEV, CHAR, DIR, FIFO, FILE, KIND_NAMES, MAX_LINK_HOPS, SYMLINK, MemberIndex
from ..tarindex.source import FileSource, Source, check_source, local_file
from .refs import MASK, SHIFT

ROOT_INO = 1
_IMPLIED_INO_BASE = 1 << 62
S_IFMT = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, CHAR: stat.S_IFCHR,
           BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}  # tar kind -> st_mode file type bits
_NO_TEXT = (b"", array("I"))


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
        return S_IFMT[_KIND_CODES[self.kind]] | self.mode

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


class _Texts(dict[int, tuple[bytes, array]]):
    """Layer position -> (blob, bounds) of its names' last components, made on first use."""

    def __init__(self, indexes: list[MemberIndex | None]) -> None:
        super().__init__()
        self.indexes = indexes

    def __missing__(self, li: int) -> tuple[bytes, array]:
        idx = self.indexes[li]
        if idx is None:
            return _NO_TEXT
        text = self[li] = (idx.names.blob, idx.names.bounds)
        return text


class Tree:
    """A directory tree in flat arrays: node n has a member reference, a parent and a name; node 0 is the root.

    References are layer << 32 | member; negative ones are implied directories. A node's name is the last
    name component of its member, or of the member `renamed[n]` (a hard link: the link, not its target),
    or `extra[-2 - renamed[n]]` (implied directories). Children are found by (parent, name) in an
    open-addressing table and listed in name order through first-child / next-sibling links: about 32 bytes
    a node, no object each.
    """

    def __init__(self, indexes: list[MemberIndex | None], sources: list[Source | None], size_hint: int = 0) -> None:
        self.indexes = indexes
        self.sources = sources
        # Node arrays, filled up to `count`: made at their expected size at once and cut to it by finish(),
        # since growing them by appends left ~9 MB of freed copies in the heap of many's mount.
        self.refs = array("q", [-1])
        self.parents = array("i", [-1])  # -2: removed (while a merge runs)
        self.first = array("i", [-1])
        self.nxt = array("i", [-1])
        self.count = 1
        self.reserve(size_hint)
        self.renamed: dict[int, int] = {}  # node -> where its name comes from, where not its reference
        self.extra: list[bytes] = []
        size = 1024
        while size < 2 * size_hint:
            size *= 2
        self.slots = array("i", [-1]) * size
        self.nlinks: dict[int, int] = {}
        self.warnings: list[str] = []
        self.nodes = PathView(self)
        self.sorted: bytearray | None = None  # node -> children in name order yet (None: still building)
        self._sort_lock = threading.Lock()
        # Each layer's (blob, bounds) of last name components, so that a name costs a slice, not two calls;
        # filled on first use, so that a layer tree sharing an image's list of every layer stays its own size.
        self.texts = _Texts(indexes)

    def __len__(self) -> int:
        return self.count - self.parents.count(-2)  # nodes made, less those removed

    # -- nodes ----------------------------------------------------------------------------
    def name(self, n: int) -> bytes:
        """Node n's name (b"" for the root)."""
        r = self.renamed.get(n)
        if r is None:
            r = self.refs[n]
        if r >= 0:
            blob, bounds = self.texts[r >> SHIFT]
            i = r & MASK
            return blob[bounds[i]:bounds[i + 1]]
        return self.extra[-2 - r] if r <= -2 else b""

    def probe(self, parent: int, name: bytes) -> int:
        """The slot of `name` in directory node `parent`, or of the free slot where it would go."""
        slots, parents, refs, renamed, texts = self.slots, self.parents, self.refs, self.renamed, self.texts
        mask = len(slots) - 1
        h = hash((parent, name)) & mask
        n = slots[h]
        while n >= 0:
            if parents[n] == parent:
                r = refs[n]
                if r >= 0 and n not in renamed:
                    blob, bounds = texts[r >> SHIFT]
                    i = r & MASK
                    if blob[bounds[i]:bounds[i + 1]] == name:
                        return h
                elif self.name(n) == name:
                    return h
            h = (h + 1) & mask
            n = slots[h]
        return h

    def child(self, parent: int, name: bytes) -> int | None:
        """The node called `name` in directory node `parent`, or None."""
        n = self.slots[self.probe(parent, name)]
        return n if n >= 0 else None

    def add(self, parent: int, name: bytes, name_ref: int, ref: int, slot: int = -1) -> int:
        """A new node under `parent`, which has no live child called `name` (`slot`: what probe() gave)."""
        if slot < 0:
            slot = self.probe(parent, name)
        n = self.count
        if n == len(self.refs):
            self.reserve(max(1024, n // 8))
        self.refs[n] = ref
        self.parents[n] = parent
        if name_ref != ref:
            self.renamed[n] = name_ref
        first = self.first
        first[n] = -1
        self.nxt[n] = first[parent]
        first[parent] = n
        if self.sorted is not None:  # a node added to a built tree (tests, hand-made trees)
            self.sorted.append(0)
            self.sorted[parent] = 0
        self.count = n + 1
        slots = self.slots
        slots[slot] = n
        if 2 * n > len(slots):
            self._rehash(4 * len(slots))
        return n

    def reserve(self, more: int) -> None:
        """Room for `more` nodes past count, made at once."""
        short = self.count + more - len(self.refs)
        if short > 0:
            for arr in (self.refs, self.parents, self.first, self.nxt):
                arr.extend(array(arr.typecode, [-1]) * short)

    def _rehash(self, size: int) -> None:
        slots = self.slots = array("i", [-1]) * size
        mask = size - 1
        parents = self.parents
        for n in range(1, self.count):
            p = parents[n]
            if p >= 0:
                h = hash((p, self.name(n))) & mask
                while slots[h] >= 0:
                    h = (h + 1) & mask
                slots[h] = n

    def kids(self, n: int) -> Iterator[int]:
        """Child nodes of node n (in name order once the tree is built)."""
        done = self.sorted
        if done is not None and not done[n]:
            self._sort(n)
        first, nxt, parents = self.first, self.nxt, self.parents
        c = first[n]
        while c >= 0:
            if parents[c] == n:
                yield c
            c = nxt[c]

    def find(self, key: bytes) -> int | None:
        """The node at a tree key (no link following), or None."""
        n: int | None = 0
        if key:
            for comp in key.split(b"/"):
                n = self.child(n, comp)  # type: ignore[arg-type]
                if n is None:
                    return None
        return n

    def path(self, n: int) -> bytes:
        """The tree key of node n."""
        parts = []
        parents = self.parents
        while n > 0:
            parts.append(self.name(n))
            n = parents[n]
        return b"/".join(reversed(parts))

    def finish(self) -> None:
        """End the build: cut the arrays to size. Children are put in name order on their first listing."""
        for arr in (self.refs, self.parents, self.first, self.nxt):
            del arr[self.count:]
        # Sorting every directory here cost a third of a merge, which every first look waited for, while
        # a lookup needs no order; a listing sorts its directory once (~1 us a child), under a lock.
        self.sorted = bytearray(self.count)

    def _sort(self, n: int) -> None:
        """Link directory node n's children in name order, dropping removed ones from its links."""
        with self._sort_lock:
            if self.sorted[n]:  # type: ignore[index]
                return
            first, nxt, parents, refs, renamed, texts = (self.first, self.nxt, self.parents, self.refs,
                                                         self.renamed, self.texts)
            pairs = []  # (name, node): sorted as tuples, all in C (names of live siblings differ)
            c = first[n]
            while c >= 0:
                if parents[c] == n:
                    r = refs[c]
                    if r >= 0 and c not in renamed:  # name(), inlined: this runs once a child
                        blob, bounds = texts[r >> SHIFT]
                        i = r & MASK
                        pairs.append((blob[bounds[i]:bounds[i + 1]], c))
                    else:
                        pairs.append((self.name(c), c))
                c = nxt[c]
            pairs.sort(reverse=True)
            head = -1
            for _, c in pairs:
                nxt[c] = head
                head = c
            first[n] = head
            self.sorted[n] = 1  # type: ignore[index]

    # -- references -----------------------------------------------------------------------
    def member(self, ref: int) -> tuple[MemberIndex, int] | None:
        """Which layer's index and which member in it a reference names; None for an implied directory or
        a reference naming no member of this tree's layers."""
        if ref < 0:
            return None
        li, i = ref >> SHIFT, ref & MASK
        idx = self.indexes[li] if li < len(self.indexes) else None
        if idx is None or i >= len(idx.kinds):
            return None
        return idx, i

    def link_target(self, ref: int) -> bytes:
        """A symlink's or hard link's target exactly as stored (b"" for anything else)."""
        found = self.member(ref)
        return found[0].links.get(found[1], b"") if found is not None else b""

    # -- metadata -------------------------------------------------------------------------
    def kind_code(self, ref: int) -> int:
        """The tar kind byte of a reference (implied directories are DIR)."""
        if ref < 0:
            return DIR
        return self.indexes[ref >> SHIFT].kinds[ref & MASK]  # type: ignore[union-attr]

    def lookup(self, path: bytes | str) -> int | None:
        """The reference stored at `path` (no link following), or None."""
        n = self.find(split_path(path))
        return None if n is None else self.refs[n]

    def entry(self, path: bytes | str) -> Entry | None:
        """The Entry at `path` (no link following), or None."""
        key = split_path(path)
        n = self.find(key)
        return None if n is None else self.entry_for(key, self.refs[n])

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
        return S_IFMT[k] | idx.modes[i], nlink, idx.uids[i], idx.gids[i], rdev, size, idx.mtime(i)

    def extent(self, ref: int) -> tuple[FileSource, int, int] | None:
        """(file, offset, size) when a file's bytes lie as they are in a plain file (an uncompressed layer).

        Lets a caller read them straight from the file (its `fd`), checking it with `check()`; None means:
        use read().
        """
        if ref < 0:
            return None
        li, i = ref >> SHIFT, ref & MASK
        idx, src = self.indexes[li], self.sources[li]
        if idx is None or i in idx.broken or i in idx.sparse:
            return None
        at = local_file(src) if src is not None else None
        if at is None or at[0].fd < 0:
            return None
        return at[0], at[1] + idx.offsets[i], idx.sizes[i]

    def check(self, ref: int) -> None:
        """Raise SourceChanged if the bytes under the layer of `ref` changed since they were opened."""
        if ref >= 0 and self.sources[ref >> SHIFT] is not None:
            check_source(self.sources[ref >> SHIFT])  # type: ignore[arg-type]

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
        n = self.find(key)
        if n is None or self.kind_code(self.refs[n]) != DIR:
            raise NotFoundError(f"not a directory: /{key.decode('utf-8', 'backslashreplace')}")
        return [self.name(c) for c in self.kids(n)]

    def child_paths(self, key: bytes) -> list[bytes]:
        """Full paths of a directory's children, sorted."""
        n = self.find(key)
        if n is None:
            return []
        return [key + b"/" + self.name(c) if key else self.name(c) for c in self.kids(n)]

    def walk(self, top: bytes | str = b"") -> Iterator[tuple[bytes, int]]:
        """Every (path, reference) under `top`, depth first, sorted, `top` included."""
        key = split_path(top)
        n = self.find(key)
        if n is None:
            return
        stack = [(key, n)]
        refs, name, kids = self.refs, self.name, self.kids
        while stack:
            p, n = stack.pop()
            yield p, refs[n]
            below = [(p + b"/" + name(c) if p else name(c), c) for c in kids(n)]
            if below:
                below.reverse()
                stack.extend(below)

    # -- links ----------------------------------------------------------------------------
    def resolve(self, path: bytes | str, follow_last: bool = True) -> bytes | None:
        """Follow symlinks inside the image root (never above it); None when dangling."""
        parts = [p for p in split_path(path).split(b"/") if p]
        parts.reverse()  # popped from the end
        cur: list[bytes] = []
        at = [0]  # the node of each prefix of cur
        hops = 0
        while parts:
            comp = parts.pop()
            if comp == b"..":
                if cur:
                    cur.pop()
                    at.pop()
                continue
            n = self.child(at[-1], comp)
            if n is None:
                return None
            ref = self.refs[n]
            if self.kind_code(ref) == SYMLINK and (parts or follow_last):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    return None
                idx = self.indexes[ref >> SHIFT]
                target = idx.links.get(ref & MASK, b"") if idx else b""
                if target.startswith(b"/"):
                    cur, at = [], [0]
                parts.extend(reversed([p for p in target.split(b"/") if p and p != b"."]))
                continue
            cur.append(comp)
            at.append(n)
        return b"/".join(cur)

    def file(self, path: bytes | str) -> int:
        """The reference of the regular file at `path` (symlinks followed inside the root); NotFoundError if none."""
        key = self.resolve(path)
        n = self.find(key) if key is not None else None
        ref = None if n is None else self.refs[n]
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
        sparse = idx.sparse.get(i) if idx.sparse else None
        if sparse is not None:  # its holes read as zeros
            return sparse.read(src, offset, min(size, length - offset))
        return src.pread(idx.offsets[i] + offset, min(size, length - offset))

    def data_extents(self, ref: int) -> list[tuple[int, int]] | None:
        """(offset, length) of the parts of a sparse file that hold data (the rest are holes); None if not sparse."""
        found = self.member(ref)
        sparse = found[0].sparse.get(found[1]) if found is not None else None
        return None if sparse is None else list(sparse.extents())

    def read_all(self, ref: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """A file's whole content, in chunks (a member that cannot be read raises, an empty one too)."""
        off = 0
        while True:
            data = self.read(ref, off, chunk)
            if not data:
                return
            yield data
            off += len(data)


class PathView(Mapping[bytes, int]):
    """A tree read as {path: reference}, for callers that think in paths (made on demand, in walk order)."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree

    def __getitem__(self, key: bytes) -> int:
        n = self.tree.find(key)
        if n is None:
            raise KeyError(key)
        return self.tree.refs[n]

    def __iter__(self) -> Iterator[bytes]:
        return (p for p, _ in self.tree.walk())

    def __len__(self) -> int:
        return len(self.tree)

    def items(self) -> Iterator[tuple[bytes, int]]:  # type: ignore[override]
        """(path, reference) of every node, depth first."""
        return self.tree.walk()

    def values(self) -> Iterator[int]:  # type: ignore[override]
        """The reference of every node, depth first."""
        return (r for _, r in self.tree.walk())
