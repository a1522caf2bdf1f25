"""What each layer changes: added, modified and deleted paths, what changed about each, and how much of
the layer's content stays visible.

A layer's changes come from comparing the merged state of the layers below it with the merged state that
includes it, so whiteouts and opaque directories show up as deletions of exactly what they hide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from .archive import Image, Layer
from .errors import ImgfsError
from .tarindex.reader import FILE, KIND_NAMES
from .tree import Tree, merged_tree
from .tree.refs import layer_refs

WHITEOUT = b".wh."
# What can differ between two versions of a path, in the order a Change lists them.
ASPECTS = ("type", "content", "target", "device", "mode", "owner", "mtime", "xattrs", "unreadable")
_CHUNK = 1 << 20


class Change(NamedTuple):
    """One path a layer added (A), modified (M) or deleted (D); for M, `what` of ASPECTS changed.

    A regular file written again exactly as it was is still a change (the layer stores it again) with an
    empty `what`; other types written again unchanged are not changes.
    """

    code: str
    path: bytes
    kind: str
    old_kind: str | None
    size_change: int
    what: tuple[str, ...] = ()


class Totals:
    """Per layer: the files it writes and their bytes, the bytes later layers hide, and change counts."""

    def __init__(self) -> None:
        self.files = self.bytes = self.wasted = self.added = self.modified = self.deleted = self.deleted_bytes = 0

    def as_dict(self) -> dict[str, int]:
        """The totals as a JSON object."""
        return dict(self.__dict__)


class LayerChanges(NamedTuple):
    """A layer, its totals and (from `diff`) its changes sorted by path."""

    layer: Layer
    totals: Totals
    changes: list[Change]


def _file_size(tree: Tree, ref: int) -> int:
    """Content size of a regular file reference, read straight from its layer's index (this runs per path)."""
    idx, i = tree.member(ref)  # type: ignore[misc]
    return idx.sizes[i]


def _own_files(tree: Tree, position: int) -> dict[int, int]:
    """ref -> size of the regular files stored in layer `position` that `tree` shows (markers left out)."""
    own = layer_refs(position)
    out: dict[int, int] = {}
    for key, ref in tree.nodes.items():
        if ref in own and ref not in out and tree.kind_code(ref) == FILE \
                and not key.rpartition(b"/")[2].startswith(WHITEOUT):
            out[ref] = _file_size(tree, ref)
    return out


def _fill(t: Totals, own: dict[int, int], final: set[int]) -> Totals:
    t.files = len(own)
    t.bytes = sum(own.values())
    t.wasted = sum(size for ref, size in own.items() if ref not in final)
    return t


def layer_totals(img: Image, warn: Callable[[str], None]) -> list[Totals | None]:
    """Files, bytes and wasted bytes of every layer (None for a layer that cannot be read)."""
    final = set(img.merged(partial=True).nodes.values())  # lists layers: an unreadable one is shown as such
    out: list[Totals | None] = []
    for la in img.layers:
        try:
            tree = img.layer_tree(la.position)
        except ImgfsError as e:
            warn(str(e))
            out.append(None)
            continue
        out.append(_fill(Totals(), _own_files(tree, la.position), final))
    return out


def _same_bytes(before: Tree, old: int, after: Tree, new: int, size: int) -> bool:
    """Whether two regular files of `size` bytes hold the same bytes (read until the first difference)."""
    for off in range(0, size, _CHUNK):
        n = min(_CHUNK, size - off)
        if before.read(old, off, n) != after.read(new, off, n):
            return False
    return True


def differences(before: Tree, after: Tree, key: bytes, old: int, new: int, content: bool = True) -> tuple[str, ...]:
    """Which ASPECTS of `key` differ between `old` in `before` and `new` in `after`.

    A regular file's content differs when its size does or, with `content`, when its bytes do (read from
    both layers); "unreadable" when they cannot be read.
    """
    if old < 0 and new < 0:
        return ()  # implied directories all look alike
    a, b = before.entry_for(key, old), after.entry_for(key, new)
    if a.kind != b.kind:
        return ("type",)
    found = []
    if a.kind == "file" and a.size != b.size:
        found.append("content")
    elif a.kind == "file" and content and a.size:
        try:
            if not _same_bytes(before, old, after, new, a.size):
                found.append("content")
        except ImgfsError:
            found.append("unreadable")
    if a.linkname != b.linkname:
        found.append("target")
    if a.kind in ("char", "block") and a.device != b.device:
        found.append("device")
    if a.mode != b.mode:
        found.append("mode")
    if (a.uid, a.gid) != (b.uid, b.gid):
        found.append("owner")
    if a.mtime != b.mtime:
        found.append("mtime")
    if before.xattrs(old) != after.xattrs(new):
        found.append("xattrs")
    return tuple(sorted(found, key=ASPECTS.index))


def _size(tree: Tree, ref: int) -> int:
    return _file_size(tree, ref) if ref >= 0 and tree.kind_code(ref) == FILE else 0


def _kind(tree: Tree, ref: int) -> str:
    return KIND_NAMES[tree.kind_code(ref)]


def compare(before: Tree, after: Tree, content: bool = True) -> list[Change]:
    """The changes that turn `before` into `after`, sorted by path (`content`: see `differences`)."""
    b, a = before.nodes, after.nodes
    out: list[Change] = []
    for key, new in a.items():
        if not key:
            continue
        old = b.get(key)
        if old is None:
            out.append(Change("A", key, _kind(after, new), None, _size(after, new)))
        elif old != new:
            what = differences(before, after, key, old, new, content)
            new_is_file = new >= 0 and after.kind_code(new) == FILE
            if not what and not new_is_file:
                continue
            ok, nk = _kind(before, old), _kind(after, new)
            out.append(Change("M", key, nk, ok if ok != nk else None, _size(after, new) - _size(before, old), what))
    for key in b.keys() - a.keys():
        out.append(Change("D", key, _kind(before, b[key]), None, -_size(before, b[key])))
    out.sort(key=lambda c: c.path)
    return out


def layer_changes(img: Image, positions: list[int], content: bool = True) -> Iterator[LayerChanges]:
    """For each layer position asked for (ascending), its changes and totals (unreadable layers are warned of).

    `content`: compare the bytes of files rewritten at the same size (see `differences`).
    """
    indexes, sources = img.layer_inputs()
    merged = img.merged()
    final = set(merged.nodes.values())
    built: dict[int, Tree] = {len(indexes): merged}

    def state(n: int) -> Tree:
        """The merged tree of the bottom `n` layers (only the latest two are kept)."""
        if n not in built:
            built[n] = merged_tree(indexes[:n], sources[:n])[0]
            for old in [k for k in built if k < n - 1 and k != len(indexes)]:
                del built[old]
        return built[n]

    for p in positions:
        before, after = state(p), state(p + 1)
        changes = compare(before, after, content) if indexes[p] is not None else []
        t = _fill(Totals(), _own_files(after, p), final)
        for c in changes:
            if c.code == "A":
                t.added += 1
            elif c.code == "M":
                t.modified += 1
            else:
                t.deleted += 1
                t.deleted_bytes -= c.size_change
        yield LayerChanges(img.layers[p], t, changes)
