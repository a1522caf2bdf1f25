"""Build trees from layer indexes: one layer as its tar holds it, or all layers merged."""

from __future__ import annotations

from collections.abc import Callable

from ..tarindex.reader import DIR, FILE, HARDLINK, PATH_MAX, SYMLINK, MemberIndex, normalize, show
from ..tarindex.source import Source
from .tree import MASK, MAX_LINK_HOPS, SHIFT, Tree

WH = b".wh."
OPAQUE = b".wh..wh..opq"
AUFS_META = b".wh..wh."


def _missing_link(li: int, name: bytes, target: bytes) -> str:
    return f"layer {li + 1}: hard link /{show(name)} -> {show(target)}: target not found, left out"


class _Builder:
    """Mutable state while layers are applied in order (rules in docs/ARCHITECTURE.md)."""

    def __init__(self, indexes: list[MemberIndex | None], follow_links: bool) -> None:
        self.indexes = indexes
        self.follow = follow_links
        self.nodes: dict[bytes, int] = {b"": -1}
        self.kids: dict[bytes, dict[bytes, None]] = {b"": {}}
        self.next_implied = -2
        self.hard_targets: set[int] = set()
        self.link_refs: dict[int, int] = {}  # hardlink member ref -> the ref it resolved to
        self.warnings: list[str] = []

    def kind(self, ref: int) -> int:
        if ref < 0:
            return DIR
        return self.indexes[ref >> SHIFT].kinds[ref & MASK]  # type: ignore[union-attr]

    # -- structure ---------------------------------------------------------------------
    def remove(self, path: bytes) -> None:
        """Remove `path` and everything below it."""
        if path == b"" or self.nodes.pop(path, None) is None:
            return
        self.kids[path.rpartition(b"/")[0]].pop(path, None)
        stack = [path]
        while stack:
            sub = self.kids.pop(stack.pop(), None)
            if sub:
                for c in sub:
                    del self.nodes[c]
                    stack.append(c)

    def clear_dir(self, path: bytes) -> None:
        """Remove every child of directory `path`, keeping the directory."""
        for c in list(self.kids.get(path, ())):
            self.remove(c)

    def put(self, path: bytes, ref: int) -> None:
        """Set `path` to `ref`: dir over dir keeps the children, anything else replaces."""
        old = self.nodes.get(path)
        is_dir = self.kind(ref) == DIR
        if old is not None:
            if is_dir and self.kind(old) == DIR:
                self.nodes[path] = ref
                return
            self.remove(path)
        self.nodes[path] = ref
        self.kids[path.rpartition(b"/")[0]][path] = None
        if is_dir:
            self.kids[path] = {}

    def implied_dir(self, path: bytes) -> None:
        self.put(path, self.next_implied)
        self.next_implied -= 1

    def dir_path(self, path: bytes, create: bool, hops: int = 0) -> bytes | None:
        """The real path of directory `path`, following symlinked components inside the root.

        Missing components become implied directories when `create` (containerd `mkparent`);
        otherwise None is returned for a missing directory.
        """
        ref = self.nodes.get(path)
        if ref is not None and self.kind(ref) == DIR:
            return path
        cur = b""
        parts = path.split(b"/") if path else []
        i = 0
        while i < len(parts):
            comp = parts[i]
            i += 1
            if comp == b"..":
                cur = cur.rpartition(b"/")[0]
                continue
            if comp in (b"", b"."):
                continue
            cand = cur + b"/" + comp if cur else comp
            if len(cand) > PATH_MAX:
                return None  # links that resolve to absurdly long paths: no directory is made for them
            ref = self.nodes.get(cand)
            if ref is None:
                if not create:
                    return None
                self.implied_dir(cand)
                cur = cand
                continue
            k = self.kind(ref)
            if k == DIR:
                cur = cand
            elif k == SYMLINK and self.follow and hops < MAX_LINK_HOPS:
                hops += 1
                target = self.indexes[ref >> SHIFT].links.get(ref & MASK, b"")  # type: ignore[union-attr]
                if target.startswith(b"/"):
                    cur = b""
                parts = target.split(b"/") + parts[i:]
                i = 0
            else:
                if not create:
                    return None
                self.implied_dir(cand)  # a file where a directory must be: the directory wins
                cur = cand
        return cur

    # -- layers ------------------------------------------------------------------------
    def apply(self, li: int, idx: MemberIndex, merged: bool) -> None:
        """Apply one layer: whiteouts first (they only hide lower layers), then its members."""
        names, kinds = idx.names, idx.kinds
        base = li << SHIFT
        markers: set[int] = set()
        if merged:
            for i, name in enumerate(names):
                if WH not in name:
                    continue
                d, _, b = name.rpartition(b"/")
                if WH in d and any(c.startswith(WH) for c in d.split(b"/")):
                    markers.add(i)  # inside a marker (AUFS keeps .wh..wh.plnk/<files>): never shown
                    continue
                if not b.startswith(WH):
                    continue
                markers.add(i)
                if b == OPAQUE:
                    self.opaque(d)
                elif b.startswith(AUFS_META):
                    continue  # AUFS bookkeeping (.wh..wh.plnk ...): never shown, no effect
                elif b in (WH, b".wh..", b".wh..."):
                    self.warnings.append(f"layer {li + 1}: invalid whiteout /{show(name)} ignored")
                else:
                    real = self.dir_path(d, create=False)
                    if real is not None:
                        self.remove(real + b"/" + b[4:] if real else b[4:])
        # Hard links whose target comes later in the tar, by member name -> (member, resolved path).
        deferred: dict[bytes, tuple[int, bytes]] = {}
        nodes, kids = self.nodes, self.kids
        for i in range(len(names)):
            if i in markers:
                continue
            name = names[i]
            k = kinds[i]
            ref = base | i
            if deferred:
                self.overrule(deferred, name, k)
            if name == b"":
                if k == DIR:
                    nodes[b""] = ref
                continue
            d, _, b = name.rpartition(b"/")
            siblings = kids.get(d)
            if siblings is not None and k != HARDLINK:
                # Fast path: the parent is a real directory already (keys in `kids` are exactly those).
                old = nodes.get(name)
                if old is None:
                    nodes[name] = ref
                    siblings[name] = None
                    if k == DIR:
                        kids[name] = {}
                    continue
                if k == DIR and name in kids:
                    nodes[name] = ref  # dir over dir: new attributes, children merge
                    continue
            parent = self.dir_path(d, create=True) if d else b""
            if parent is None:
                self.warnings.append(f"layer {li + 1}: /{show(name[:200])} lies under a path too long to resolve")
                continue
            path = parent + b"/" + b if parent else b
            if k == HARDLINK:
                if not self.link(path, ref, idx.links.get(i, b"")):
                    deferred[name] = (i, path)
                continue
            self.put(path, ref)
        for i, path in deferred.values():
            if not self.link(path, base | i, idx.links.get(i, b"")):
                self.warnings.append(_missing_link(li, names[i], idx.links.get(i, b"")))

    @staticmethod
    def overrule(deferred: dict[bytes, tuple[int, bytes]], name: bytes, kind: int) -> None:
        """Drop pending hard links that a later entry of the layer overrules (rule 16, sequential order).

        The same path, or anything below it, overrules the link; an entry above it does only when it is
        not a directory (a directory restated over a directory replaces nothing).
        """
        for pending in list(deferred):
            same_or_below = name == pending or name.startswith(pending + b"/")
            replaces_parent = kind != DIR and (name == b"" or pending.startswith(name + b"/"))
            if same_or_below or replaces_parent:
                del deferred[pending]

    def opaque(self, d: bytes) -> None:
        """Hide everything lower layers put in directory `d`; a symlink at `d` is not followed (rule 13)."""
        pd, _, pb = d.rpartition(b"/")
        if not d:
            self.clear_dir(b"")
            return
        parent = self.dir_path(pd, create=False) if pd else b""
        if parent is None:
            return
        real = parent + b"/" + pb if parent else pb
        if real in self.kids:
            self.clear_dir(real)

    def link(self, path: bytes, ref: int, target: bytes) -> bool:
        """Point `path` at the content of `target` as it is now (rule 21); False if not there."""
        tkey = normalize(target)
        if tkey is None:
            return False
        d, _, b = tkey.rpartition(b"/")
        parent = self.dir_path(d, create=False) if d else b""
        if parent is None:
            return False
        tref = self.nodes.get(parent + b"/" + b if parent else b)
        if tref is None or tref < 0 or self.kind(tref) != FILE:
            return False
        self.put(path, tref)
        self.hard_targets.add(tref)
        self.link_refs[ref] = tref
        return True

    def finish(self, sources: list[Source | None]) -> Tree:
        children = {p: tuple(sorted(k)) for p, k in self.kids.items() if k}
        nlinks: dict[int, int] = {}
        if self.hard_targets:
            ht = self.hard_targets
            for v in self.nodes.values():
                if v in ht:
                    nlinks[v] = nlinks.get(v, 0) + 1
        return Tree(self.indexes, sources, self.nodes, children, nlinks, self.warnings)


def merged_tree(indexes: list[MemberIndex | None], sources: list[Source | None]) -> tuple[Tree, dict[int, int]]:
    """All layers applied bottom to top; also the hard-link resolutions, for layer trees."""
    b = _Builder(indexes, follow_links=True)
    for li, idx in enumerate(indexes):
        if idx is None:
            b.warnings.append(f"layer {li + 1} cannot be read: the merged view lacks its changes")
            continue
        b.apply(li, idx, merged=True)
    return b.finish(sources), b.link_refs


def layer_tree(li: int, indexes: list[MemberIndex | None], sources: list[Source | None],
               link_refs: Callable[[], dict[int, int]] | None = None) -> Tree:
    """One layer exactly as its tar holds it, whiteout markers included.

    `link_refs` is asked (only if needed) for the merged build's resolution of hard links into lower layers.
    """
    b = _Builder(indexes, follow_links=False)
    idx = indexes[li]
    if idx is not None:
        b.apply(li, idx, merged=False)
        missing = [i for i, k in enumerate(idx.kinds) if k == HARDLINK and idx.names[i] not in b.nodes]
        if missing and link_refs is not None:
            refs = link_refs()
            base = li << SHIFT
            b.warnings = [w for w in b.warnings if "hard link" not in w]
            for i in missing:
                target = refs.get(base | i)
                if target is None:
                    b.warnings.append(_missing_link(li, idx.names[i], idx.links.get(i, b"")))
                    continue
                d, _, name = idx.names[i].rpartition(b"/")
                parent = b.dir_path(d, create=True) if d else b""
                if parent is not None:
                    b.put(parent + b"/" + name if parent else name, target)
    return b.finish(sources)
