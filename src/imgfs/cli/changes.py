"""What each layer changes: added, modified and deleted paths, and how much of its content stays visible.

A layer's changes come from comparing the merged state of the layers below it with the merged state that
includes it, so whiteouts and opaque directories show up as deletions of exactly what they hide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from ..archive import Image, Layer
from ..errors import ImgfsError
from ..tarindex.reader import FILE, KIND_NAMES
from ..tree import Tree, merged_tree
from ..tree.tree import MASK, SHIFT

WHITEOUT = b".wh."


class Change(NamedTuple):
    """One path a layer added (A), modified (M) or deleted (D)."""

    code: str
    path: bytes
    kind: str
    old_kind: str | None
    size_change: int


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
    return tree.indexes[ref >> SHIFT].sizes[ref & MASK]  # type: ignore[union-attr]


def _own_files(tree: Tree, position: int) -> dict[int, int]:
    """ref -> size of the regular files stored in layer `position` that `tree` shows (markers left out)."""
    lo, hi = position << SHIFT, (position + 1) << SHIFT
    out: dict[int, int] = {}
    for key, ref in tree.nodes.items():
        if lo <= ref < hi and ref not in out and tree.kind_code(ref) == FILE \
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


def _same(before: Tree, after: Tree, key: bytes, old: int, new: int) -> bool:
    """Whether a non-file entry is unchanged though a layer wrote it again (e.g. a parent directory)."""
    if old < 0 and new < 0:
        return True  # implied directories all look alike
    a, b = before.entry_for(key, old), after.entry_for(key, new)
    return (a.kind, a.mode, a.uid, a.gid, a.mtime, a.linkname, a.device) == \
        (b.kind, b.mode, b.uid, b.gid, b.mtime, b.linkname, b.device) and before.xattrs(old) == after.xattrs(new)


def _size(tree: Tree, ref: int) -> int:
    return _file_size(tree, ref) if ref >= 0 and tree.kind_code(ref) == FILE else 0


def _kind(tree: Tree, ref: int) -> str:
    return KIND_NAMES[tree.kind_code(ref)]


def compare(before: Tree, after: Tree) -> list[Change]:
    """The changes that turn `before` into `after`, sorted by path."""
    b, a = before.nodes, after.nodes
    out: list[Change] = []
    for key, new in a.items():
        if not key:
            continue
        old = b.get(key)
        if old is None:
            out.append(Change("A", key, _kind(after, new), None, _size(after, new)))
        elif old != new:
            new_is_file = new >= 0 and after.kind_code(new) == FILE
            if not new_is_file and _same(before, after, key, old, new):
                continue
            ok, nk = _kind(before, old), _kind(after, new)
            out.append(Change("M", key, nk, ok if ok != nk else None, _size(after, new) - _size(before, old)))
    for key in b.keys() - a.keys():
        out.append(Change("D", key, _kind(before, b[key]), None, -_size(before, b[key])))
    out.sort(key=lambda c: c.path)
    return out


def layer_changes(img: Image, positions: list[int]) -> Iterator[LayerChanges]:
    """For each layer position asked for (ascending), its changes and totals (unreadable layers are warned of)."""
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
        changes = compare(before, after) if indexes[p] is not None else []
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
