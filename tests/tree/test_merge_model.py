"""Model-based test of the merger: random layer stacks applied by imgfs and by a small reference, entry by entry.

The reference is a dict path -> record, changed in tar order with the rules of docs/LAYER-RULES.md: whiteouts and
opaque markers first, against the lower layers only (rules 8-10); markers never shown (12); dir over dir keeps
the children (14); anything else replaces the subtree (14); missing or non-directory parents become implied
0755 root directories (15); later entries win (16); '.' only sets the root's attributes (18); a hard link
shares the record its target has at that point, or at the end of the layer when the target comes later (21).
Symlinks are only made at leaf names that are never used as a parent, so no path goes through one (rule 17
has its own tests in test_merge.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fuzz_derandomize, fuzz_examples
from imgfs.tree import Tree, merged_tree
from tarmaker import OPQ, WH, BytesSource, D, F, H, Member, S, index_of, tar_of

PARENTS = ["a", "b"]  # the only names used as directories on the way to an entry
LEAVES = ["a", "b", "c"]  # 'c' is never a parent: symlinks live there


@dataclass(eq=False)
class Rec:
    """One inode of the reference: hard links share the object."""

    kind: str
    mode: int = 0o755
    uid: int = 0
    mtime: int = 0
    data: bytes | None = None
    link: str | None = None


@dataclass
class Op:
    """One generated tar member (or marker)."""

    kind: str  # file dir symlink hardlink whiteout opaque root
    path: str
    mode: int = 0o644
    uid: int = 0
    target: str = ""
    extra: dict = field(default_factory=dict)


def _parent(path: str) -> str:
    """The parent path ('' for a top-level name)."""
    return path.rpartition("/")[0]


class Reference:
    """The merged view the rules define, computed the simplest way."""

    def __init__(self) -> None:
        self.nodes: dict[str, Rec] = {"": Rec("dir")}

    def isdir(self, path: str) -> bool:
        """Whether `path` holds a directory."""
        return path in self.nodes and self.nodes[path].kind == "dir"

    def remove(self, path: str) -> None:
        """Remove `path` and everything below it."""
        for p in [p for p in self.nodes if p == path or p.startswith(path + "/")]:
            del self.nodes[p]

    def clear(self, d: str) -> None:
        """Remove everything below directory `d`, keeping `d`."""
        for p in [p for p in self.nodes if p and p != d and (not d or p.startswith(d + "/"))]:
            del self.nodes[p]

    def mkparents(self, path: str) -> None:
        """Make every parent of `path` a directory: missing or non-directory ones become implied (rule 15)."""
        cur = ""
        for comp in path.split("/")[:-1]:
            cur = f"{cur}/{comp}" if cur else comp
            if not self.isdir(cur):
                self.remove(cur)
                self.nodes[cur] = Rec("dir")  # implied: 0755 root:root, mtime 0

    def put(self, path: str, rec: Rec) -> None:
        """Set `path`: dir over dir keeps the children, anything else replaces the subtree (rule 14)."""
        old = self.nodes.get(path)
        if old is not None and not (old.kind == "dir" and rec.kind == "dir"):
            self.remove(path)
        self.nodes[path] = rec

    def link_target(self, target: str) -> Rec | None:
        """The file record a hard link to `target` shares now, or None."""
        rec = self.nodes.get(target)
        parent_ok = _parent(target) == "" or self.isdir(_parent(target))
        return rec if parent_ok and rec is not None and rec.kind == "file" else None

    def apply(self, li: int, ops: list[Op]) -> None:
        """Apply one layer's operations, in tar order, with the rules above."""
        for op in ops:  # rules 8-10: markers act on the lower layers only, in any order
            if op.kind == "opaque" and self.isdir(op.path):
                self.clear(op.path)
            elif op.kind == "whiteout" and (_parent(op.path) == "" or self.isdir(_parent(op.path))):
                self.remove(op.path)
        pending: dict[str, str] = {}
        for i, op in enumerate(ops):
            if op.kind in ("opaque", "whiteout"):
                continue
            if op.kind == "root":
                self.nodes[""] = Rec("dir", op.mode, op.uid, _mtime(li, i))
                continue
            # Rule 16: a later entry wins over a link still waiting for its target at its own path or at a
            # parent it implies; one that replaces a path also wins over the links waiting below it.
            pending.pop(op.path, None)
            for p in [p for p in pending if op.path.startswith(p + "/")]:
                del pending[p]
            self.mkparents(op.path)
            rec = self.link_target(op.target) if op.kind == "hardlink" else None
            if op.kind == "hardlink" and rec is None:
                pending[op.path] = op.target  # resolved at the end of the layer, if nothing overrules it
                continue
            if op.kind != "dir":
                for p in [p for p in pending if p.startswith(op.path + "/")]:
                    del pending[p]
            if op.kind == "hardlink":
                self.put(op.path, rec)  # type: ignore[arg-type]
            elif op.kind == "file":
                self.put(op.path, Rec("file", op.mode, op.uid, _mtime(li, i), data=_data(li, i)))
            elif op.kind == "dir":
                self.put(op.path, Rec("dir", op.mode, op.uid, _mtime(li, i)))
            else:
                self.put(op.path, Rec("symlink", 0o777, 0, _mtime(li, i), link=op.target))
        for path, target in pending.items():
            self.mkparents(path)
            rec = self.link_target(target)
            if rec is not None:
                self.put(path, rec)


def _mtime(li: int, i: int) -> int:
    """The mtime given to member `i` of layer `li` (unique, so replacements show)."""
    return 1000 * (li + 1) + i


def _data(li: int, i: int) -> bytes:
    """The content given to member `i` of layer `li` (unique, so every read is traceable)."""
    return f"layer {li} member {i}".encode()


def _member(li: int, i: int, op: Op) -> Member:
    """The tar member for one generated operation."""
    if op.kind == "file":
        return F(op.path, _data(li, i), mode=op.mode, uid=op.uid, mtime=_mtime(li, i))
    if op.kind == "dir":
        return D(op.path, mode=op.mode, uid=op.uid, mtime=_mtime(li, i))
    if op.kind == "root":
        return D(".", mode=op.mode, uid=op.uid, mtime=_mtime(li, i))
    if op.kind == "symlink":
        return S(op.path, op.target, mtime=_mtime(li, i))
    if op.kind == "hardlink":
        return H(op.path, op.target)
    if op.kind == "whiteout":
        return WH(op.path)
    return OPQ(op.path)


# -- generation --------------------------------------------------------------------------------------------------
paths = st.builds(lambda ps, leaf: "/".join([*ps, leaf]), st.lists(st.sampled_from(PARENTS), max_size=2),
                  st.sampled_from(LEAVES))
dir_paths = st.lists(st.sampled_from(PARENTS), max_size=3).map("/".join)  # '' is the root
ops = st.one_of(
    st.builds(Op, st.just("file"), paths, st.sampled_from([0o644, 0o600, 0o4755]), st.sampled_from([0, 7])),
    st.builds(Op, st.just("dir"), paths, st.sampled_from([0o755, 0o700, 0o1777]), st.sampled_from([0, 7])),
    st.builds(Op, st.just("symlink"), paths.map(lambda p: _parent(p) + "/c" if _parent(p) else "c"),
              target=st.sampled_from(["x", "/a", "../c", "a/b"])),
    st.builds(Op, st.just("hardlink"), paths, target=paths),
    st.builds(Op, st.just("whiteout"), paths),
    st.builds(Op, st.just("opaque"), dir_paths),
    st.builds(Op, st.just("root"), st.just(""), st.sampled_from([0o755, 0o700]), st.sampled_from([0, 7])),
)
stacks = st.lists(st.lists(ops, max_size=8), min_size=1, max_size=4)


# -- comparison -------------------------------------------------------------------------------------------------
def engine_view(tree: Tree) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """Path -> (kind, mode, uid, mtime, content or target, nlink) and the hard-link groups, from imgfs."""
    view, groups = {}, {}
    for key, ref in tree.walk():
        e = tree.entry_for(key, ref)
        path = key.decode()
        body = b"".join(tree.read_all(ref)) if e.kind == "file" else (e.linkname or b"").decode() or None
        view[path] = (e.kind, e.mode, e.uid, int(e.mtime), body, e.nlink if e.kind == "file" else None)
        if e.kind == "file":
            groups.setdefault(e.ino, set()).add(path)
    return view, {frozenset(g) for g in groups.values() if len(g) > 1}


def model_view(ref: Reference) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """The same from the reference."""
    members: dict[int, set[str]] = {}
    for path, rec in ref.nodes.items():
        if rec.kind == "file":
            members.setdefault(id(rec), set()).add(path)
    view = {}
    for path, rec in ref.nodes.items():
        body = rec.data if rec.kind == "file" else rec.link
        nlink = len(members[id(rec)]) if rec.kind == "file" else None
        view[path] = (rec.kind, rec.mode, rec.uid, rec.mtime, body, nlink)
    return view, {frozenset(g) for g in members.values() if len(g) > 1}


@settings(max_examples=fuzz_examples(400), deadline=None, derandomize=fuzz_derandomize(),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(stacks)
def test_merged_tree_matches_the_reference(layers: list[list[Op]]) -> None:
    ref = Reference()
    datas = []
    for li, layer in enumerate(layers):
        ref.apply(li, layer)
        datas.append(tar_of([_member(li, i, op) for i, op in enumerate(layer)]))
    tree, _ = merged_tree([index_of(d) for d in datas], [BytesSource(d) for d in datas])
    got, got_groups = engine_view(tree)
    want, want_groups = model_view(ref)
    diffs = {p: (want.get(p), got.get(p)) for p in sorted(set(got) | set(want)) if got.get(p) != want.get(p)}
    assert not diffs, diffs
    assert got_groups == want_groups


def test_reference_sanity() -> None:
    # The reference itself on a hand-checked stack: opaque, whiteout, implied parent, hard link, later wins.
    ref = Reference()
    ref.apply(0, [Op("dir", "a"), Op("file", "a/b"), Op("file", "b")])
    ref.apply(1, [Op("opaque", "a"), Op("file", "a/a"), Op("whiteout", "b"), Op("hardlink", "b/c", target="a/a"),
                  Op("file", "a/a", mode=0o600)])
    view, groups = model_view(ref)
    assert sorted(view) == ["", "a", "a/a", "b", "b/c"]
    assert view["b"][:3] == ("dir", 0o755, 0)  # implied
    assert view["a/a"][1] == 0o600 and view["b/c"][4] == _data(1, 1)  # the link kept the content it had
    assert groups == set()


# -- invariants with symlinks anywhere (rule 17: written through, never out of the root) ------------------------
free_links = st.builds(Op, st.just("symlink"), paths,
                       target=st.sampled_from(["a", "b", "/a", "/a/b", "..", "../..", "../../..", "/", ".", "a/b/c",
                                               "c", "../a", "b/../../a", "/../../b", "nowhere/x"]))
free_stacks = st.lists(st.lists(st.one_of(ops, free_links, free_links), max_size=10), min_size=1, max_size=4)


@settings(max_examples=fuzz_examples(300), deadline=None, derandomize=fuzz_derandomize(),
          suppress_health_check=[HealthCheck.too_slow])
@given(free_stacks)
def test_tree_invariants_with_symlinked_parents(layers: list[list[Op]]) -> None:
    datas = [tar_of([_member(li, i, op) for i, op in enumerate(layer)]) for li, layer in enumerate(layers)]
    tree, _ = merged_tree([index_of(d) for d in datas], [BytesSource(d) for d in datas])
    seen = set()
    for key, ref in tree.walk():
        seen.add(key)
        assert key == b"" or all(c not in (b"", b".", b"..") for c in key.split(b"/")), key
        if key:
            parent = key.rpartition(b"/")[0]
            assert tree.entry(parent).kind == "dir" and key.rpartition(b"/")[2] in tree.listdir(parent), key
        e = tree.entry_for(key, ref)
        if e.kind == "file":
            assert len(b"".join(tree.read_all(ref))) == e.size
        resolved = tree.resolve(key)
        assert resolved is None or tree.lookup(resolved) is not None
    assert seen == set(tree.nodes)  # every node is reachable from the root
    assert tree.entry("").kind == "dir"
