"""Build trees from layer indexes: one layer as its tar holds it, or all layers merged."""

from __future__ import annotations

from collections.abc import Callable

from ..tarindex.reader import DIR, FILE, HARDLINK, MAX_LINK_HOPS, PATH_MAX, SYMLINK, MemberIndex, normalize, show
from ..tarindex.source import Source
from .refs import MASK, SHIFT
from .tree import Tree

WH = b".wh."
OPAQUE = b".wh..wh..opq"
AUFS_META = b".wh..wh."


def _missing_link(li: int, name: bytes, target: bytes) -> str:
    return f"layer {li + 1}: hard link /{show(name)} -> {show(target)}: target not found, left out"


class _Builder:
    """Mutable state while layers are applied in order (rules in docs/ARCHITECTURE.md).

    Works on the tree's nodes directly: a name's directory is resolved once per layer (Names.dirs), not
    once per member, and no path is made as an object unless a rare case (links, whiteouts) needs it.
    """

    def __init__(self, indexes: list[MemberIndex | None], sources: list[Source | None], follow_links: bool,
                 size_hint: int) -> None:
        self.indexes = indexes
        self.follow = follow_links
        self.t = Tree(indexes, sources, size_hint)
        self.kind = self.t.kind_code
        self.next_implied = -2
        self.hard_targets: set[int] = set()
        self.link_refs: dict[int, int] = {}  # hardlink member ref -> the ref it resolved to
        self.warnings: list[str] = []
        self.literal = True  # whether the last dir_node() followed no symlink

    def is_dir(self, n: int | None) -> bool:
        return n is not None and self.kind(self.t.refs[n]) == DIR

    # -- structure ---------------------------------------------------------------------
    def remove(self, n: int) -> None:
        """Remove node n and everything below it."""
        t = self.t
        parents = t.parents
        if n <= 0 or parents[n] == -2:
            return
        stack = [n]
        while stack:
            x = stack.pop()
            stack.extend(t.kids(x))
            parents[x] = -2

    def clear_dir(self, n: int) -> None:
        """Remove every child of directory node n, keeping the directory."""
        for c in list(self.t.kids(n)):
            self.remove(c)

    def put(self, parent: int, name: bytes, name_ref: int, ref: int) -> int:
        """Set `name` in `parent` to `ref`: dir over dir keeps the children, anything else replaces."""
        t = self.t
        h = t.probe(parent, name)
        old = t.slots[h]
        if old >= 0:
            if self.kind(ref) == DIR and self.kind(t.refs[old]) == DIR:
                t.refs[old] = ref
                return old
            # The new node takes the old one's slot: a name written over and over (a hostile tar can hold
            # one path 100k times) would otherwise lengthen its probe chain each time, a quadratic merge.
            self.remove(old)
        return t.add(parent, name, name_ref, ref, h)

    def implied_dir(self, parent: int, name: bytes) -> int:
        t = self.t
        t.extra.append(name)
        n = self.put(parent, name, -1 - len(t.extra), self.next_implied)
        self.next_implied -= 1
        return n

    def dir_node(self, path: bytes, create: bool, hops: int = 0) -> int | None:
        """The node of directory `path`, following symlinked components inside the root.

        Missing components become implied directories when `create` (containerd `mkparent`);
        otherwise None is returned for a missing directory. Sets self.literal.
        """
        t = self.t
        self.literal = True
        cur = 0
        stack: list[tuple[int, int]] = []  # (node, length of its path) of each component walked
        length = 0
        parts = path.split(b"/") if path else []
        i = 0
        while i < len(parts):
            comp = parts[i]
            i += 1
            if comp == b"..":
                if stack:
                    stack.pop()
                cur, length = stack[-1] if stack else (0, 0)
                continue
            if comp in (b"", b"."):
                continue
            clen = length + 1 + len(comp) if length else len(comp)
            if clen > PATH_MAX:
                return None  # links that resolve to absurdly long paths: no directory is made for them
            n = t.child(cur, comp)
            if n is None:
                if not create:
                    return None
                n = self.implied_dir(cur, comp)
            else:
                k = self.kind(t.refs[n])
                if k == SYMLINK and self.follow and hops < MAX_LINK_HOPS:
                    hops += 1
                    self.literal = False
                    target = self.indexes[t.refs[n] >> SHIFT].links.get(t.refs[n] & MASK, b"")  # type: ignore[union-attr]
                    if target.startswith(b"/"):
                        cur, length, stack = 0, 0, []
                    parts = target.split(b"/") + parts[i:]
                    i = 0
                    continue
                if k != DIR:
                    if not create:
                        return None
                    n = self.implied_dir(cur, comp)  # a file where a directory must be: the directory wins
            cur, length = n, clen
            stack.append((cur, length))
        return cur

    # -- layers ------------------------------------------------------------------------
    def apply(self, li: int, idx: MemberIndex, merged: bool) -> None:
        """Apply one layer: whiteouts first (they only hide lower layers), then its members."""
        names, kinds = idx.names, idx.kinds
        dirs, dir_of = names.dirs, names.dir_of
        base = li << SHIFT
        t = self.t
        markers: set[int] = set()
        if merged and (WH in names.blob or any(WH in d for d in dirs)):
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
                    real = self.dir_node(d, create=False)
                    hidden = t.child(real, b[4:]) if real is not None else None
                    if hidden is not None:
                        self.remove(hidden)
        # Hard links whose target comes later in the tar, by member name -> (member, parent's real path, name).
        deferred: dict[bytes, tuple[int, bytes, bytes]] = {}
        parents, refs, first, nxt = t.parents, t.refs, t.first, t.nxt
        blob, bounds = names.blob, names.bounds
        # Names.dirs position -> its directory node, once reached without following a link; a directory
        # member fills in its own position, so each directory is resolved from the root at most once.
        found: list[int] = [-1] * len(dirs)
        dir_ids = {d: k for k, d in enumerate(dirs)}
        for i in range(len(names)):
            if markers and i in markers:
                continue
            k = kinds[i]
            ref = base | i
            if deferred:  # a link still waiting for its own target replaces nothing yet: as a directory would
                self.overrule(deferred, names[i], DIR if k == HARDLINK else k)
            b = blob[bounds[i]:bounds[i + 1]]
            if not b:  # the root itself
                if k == DIR:
                    refs[0] = ref
                continue
            did = dir_of[i]
            p = found[did]
            literal = True
            # A directory found before is still it while alive: nodes never move, and one that stops being a
            # directory is removed (only dir over dir changes a node's reference).
            if p < 0 or parents[p] == -2:
                d = dirs[did]
                p = self.dir_node(d, create=True) if d else 0
                if p is None:
                    self.warnings.append(f"layer {li + 1}: /{show(names[i][:200])} lies under a path too long "
                                         "to resolve")
                    continue
                literal = self.literal
                found[did] = p if literal else -1
            if k == HARDLINK:
                if not self.link(p, b, ref, idx.links.get(i, b"")):
                    deferred[names[i]] = (i, t.path(p), b)  # the path: p may be replaced meanwhile
                elif deferred:
                    self.overrule(deferred, names[i], k)  # placed: it wins over links waiting below it
                continue
            # Tree.add inlined: this loop runs once a member, and the calls cost a third of a merge.
            slots = t.slots
            h = hash((p, b)) & (len(slots) - 1)
            n = slots[h]
            if n >= 0:  # taken: by this very name, or by another (then probe on)
                h = t.probe(p, b)
                n = slots[h]
            if n < 0:
                n = t.count
                if n == len(refs):
                    t.reserve(max(1024, n // 8))
                refs[n] = ref
                parents[n] = p
                first[n] = -1
                nxt[n] = first[p]
                first[p] = n
                t.count = n + 1
                slots[h] = n
                if n + n > len(slots):
                    t._rehash(4 * len(slots))
            else:
                n = self.put(p, b, ref, ref)
            if k == DIR and literal:
                d = dirs[did]
                own = dir_ids.get(d + b"/" + b if d else b)
                if own is not None:
                    found[own] = n
        for i, where, b in deferred.values():
            p = t.find(where)
            if not self.is_dir(p) or not self.link(p, b, base | i, idx.links.get(i, b"")):
                self.warnings.append(_missing_link(li, names[i], idx.links.get(i, b"")))

    @staticmethod
    def overrule(deferred: dict[bytes, tuple[int, bytes, bytes]], name: bytes, kind: int) -> None:
        """Drop pending hard links that a later entry of the layer overrules (LAYER-RULES rule 16: tar order).

        The same path, or anything below it, overrules the link; an entry above it does only when it is
        not a directory (a directory restated over a directory replaces nothing).
        """
        for pending in list(deferred):
            same_or_below = name == pending or name.startswith(pending + b"/")
            replaces_parent = kind != DIR and (name == b"" or pending.startswith(name + b"/"))
            if same_or_below or replaces_parent:
                del deferred[pending]

    def opaque(self, d: bytes) -> None:
        """Hide everything lower layers put in directory `d`; a symlink at `d` is not followed (LAYER-RULES rule 13)."""
        pd, _, pb = d.rpartition(b"/")
        if not d:
            self.clear_dir(0)
            return
        parent = self.dir_node(pd, create=False) if pd else 0
        if parent is None:
            return
        real = self.t.child(parent, pb)
        if real is not None and self.is_dir(real):
            self.clear_dir(real)

    def link(self, parent: int, name: bytes, ref: int, target: bytes) -> bool:
        """Point `name` in `parent` at the content of `target` as it is now (LAYER-RULES rule 21), or False."""
        tkey = normalize(target)
        if tkey is None:
            return False
        d, _, b = tkey.rpartition(b"/")
        tparent = self.dir_node(d, create=False) if d else 0
        if tparent is None:
            return False
        tnode = self.t.child(tparent, b)
        tref = self.t.refs[tnode] if tnode is not None else -1
        if tref < 0 or self.kind(tref) != FILE:
            return False
        self.put(parent, name, ref, tref)
        self.hard_targets.add(tref)
        self.link_refs[ref] = tref
        return True

    def finish(self) -> Tree:
        t = self.t
        t.finish()
        if self.hard_targets:
            ht, parents, nlinks = self.hard_targets, t.parents, t.nlinks
            for n, v in enumerate(t.refs):
                if v in ht and parents[n] != -2:
                    nlinks[v] = nlinks.get(v, 0) + 1
        t.warnings = self.warnings
        return t


def merged_tree(indexes: list[MemberIndex | None], sources: list[Source | None]) -> tuple[Tree, dict[int, int]]:
    """All layers applied bottom to top; also the hard-link resolutions, for layer trees."""
    b = _Builder(indexes, sources, follow_links=True, size_hint=sum(len(i) for i in indexes if i is not None))
    for li, idx in enumerate(indexes):
        if idx is None:  # unreadable: the caller decides whether a view without it may be shown
            continue
        b.apply(li, idx, merged=True)
    return b.finish(), b.link_refs


def layer_tree(li: int, indexes: list[MemberIndex | None], sources: list[Source | None],
               link_refs: Callable[[], dict[int, int]] | None = None) -> Tree:
    """One layer exactly as its tar holds it, whiteout markers included.

    `link_refs` is asked (only if needed) for the merged build's resolution of hard links into lower layers.
    """
    idx = indexes[li]
    b = _Builder(indexes, sources, follow_links=False, size_hint=len(idx) if idx is not None else 0)
    if idx is not None:
        b.apply(li, idx, merged=False)
        missing = [i for i, k in enumerate(idx.kinds) if k == HARDLINK and b.t.find(idx.names[i]) is None]
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
                parent = b.dir_node(d, create=True) if d else 0
                if parent is not None:
                    b.put(parent, name, base | i, target)
    return b.finish()
