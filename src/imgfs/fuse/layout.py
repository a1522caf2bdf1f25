"""The mount's fixed skeleton (image dirs, layers/, config.json ...) and where each tree hangs in it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime

from ..archive import Image
from ..errors import ImgfsError
from ..formats.naming import MAX_NAME, SLASH
from ..tree import Tree
from .inodes import MOUNT_ROOT, Inodes

DIR, FILE, TREE = range(3)


class Node:
    """A skeleton entry: a directory, a small file, or the root of a tree (built on first use)."""

    __slots__ = ("kind", "ino", "path", "names", "data", "load", "tree", "mtime", "error", "slot")

    def __init__(self, kind: int, ino: int, path: bytes, data: bytes = b"", load: Callable[[], Tree] | None = None,
                 mtime: float | None = None) -> None:
        self.kind, self.ino, self.path, self.data, self.load = kind, ino, path, data, load
        self.names: tuple[bytes, ...] = ()
        self.tree: Tree | None = None
        self.mtime = mtime  # for a tree whose root no layer describes: when its layer was made
        self.error: ImgfsError | None = None  # why the tree cannot be built: kept, so it is tried once
        self.slot = 0  # a TREE node's place in Layout.trees, + 1

    def get_tree(self) -> Tree:
        """The tree mounted here, built on first access (the engine keeps it); ImgfsError if it cannot be."""
        tree = self.tree
        if tree is None:
            if self.error is not None:
                raise self.error
            assert self.load is not None
            try:
                tree = self.tree = self.load()
            except ImgfsError as e:
                self.error = e
                raise
        return tree


def _timestamp(created: str | None) -> float | None:
    """Seconds since the epoch of a history 'created' time (RFC 3339, nanoseconds allowed), or None."""
    if not created:
        return None
    text = created.strip().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python takes at most microseconds: drop the extra digits of Go's nanoseconds
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = head + "." + rest[:min(digits, 6)] + rest[digits:]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def dir_name(label: str) -> str:
    """A label as one file name: '/' shown as U+2215 (like layer names), no NUL, at most 255 bytes."""
    name = label.replace("/", SLASH).replace("\0", "").strip()
    if name in ("", ".", ".."):
        name = "image"
    data = name.encode("utf-8", "surrogateescape")
    return data[:MAX_NAME].decode("utf-8", "ignore") if len(data) > MAX_NAME else name


def unique_names(images: list[Image]) -> list[str]:
    """One distinct directory name per image: the label, then the platform, then a counter if needed."""
    labels = [dir_name(i.label) for i in images]
    names = [dir_name(f"{name} ({img.platform})") if labels.count(name) > 1 and img.platform else name
             for name, img in zip(labels, images, strict=True)]
    seen: set[str] = set()
    for n, name in enumerate(names):
        k = 2
        while names[n] in seen:
            names[n] = dir_name(f"{name} ({k})")
            k += 1
        seen.add(names[n])
    return names


def manifest_bytes(image: Image) -> bytes:
    """The image manifest; a legacy docker-archive has none, so its manifest.json entry, as the parser read
    it (Config, RepoTags, Layers), stands in."""
    if image.desc.manifest_bytes is not None:
        return image.desc.manifest_bytes
    entry = {"Config": image.desc.config_member, "RepoTags": image.refs,
             "Layers": [layer.member for layer in image.layers]}
    return json.dumps(entry, indent=2).encode() + b"\n"


class Layout:
    """Every skeleton path (bytes, from the mount root) mapped to its Node; trees sit below TREE nodes."""

    def __init__(self, images: list[Image]) -> None:
        self.nodes: dict[bytes, Node] = {}
        self.trees: list[Node] = []  # TREE nodes by slot - 1
        root = self._add(b"/", DIR)  # first, so that it is the inode the kernel asks for as the root
        assert root.ino == MOUNT_ROOT
        if len(images) == 1:
            self._image(b"", images[0])
        else:
            for name, img in zip(unique_names(images), images, strict=True):
                self._image(b"/" + os.fsencode(name), img)
        self._finish_dirs()
        self.inodes = Inodes(len(self.trees), max((len(img.layers) for img in images), default=1))
        for node in self.trees:
            node.ino = self.inodes.tree_root(node.slot)

    def _add(self, path: bytes, kind: int, **kw: object) -> Node:
        node = Node(kind, len(self.nodes) + 1 - len(self.trees), path, **kw)  # type: ignore[arg-type]
        self.nodes[path] = node
        return node

    def _tree(self, path: bytes, load: Callable[[], Tree], created: str | None = None) -> None:
        node = Node(TREE, 0, path, load=load, mtime=_timestamp(created))
        self.trees.append(node)
        node.slot = len(self.trees)
        self.nodes[path] = node

    def _image(self, base: bytes, img: Image) -> None:
        self._add(base + b"/config.json", FILE, data=img.desc.config_bytes)
        self._add(base + b"/manifest.json", FILE, data=manifest_bytes(img))
        self._tree(base + b"/merged", img.merged)
        for name, data in img.attestations():  # attestations/ (implied by its files) only where there are some
            self._add(base + b"/attestations/" + os.fsencode(name), FILE, data=data)
        self._add(base + b"/layers", DIR)
        for layer in img.layers:
            self._tree(base + b"/layers/" + os.fsencode(layer.name),
                       lambda pos=layer.position: img.layer_tree(pos), layer.created)

    def _finish_dirs(self) -> None:
        """Create the implied directories (the root, image dirs) and fill every child list."""
        for path in list(self.nodes):
            parent = path.rpartition(b"/")[0] or b"/"
            while parent not in self.nodes:
                self._add(parent, DIR)
                parent = parent.rpartition(b"/")[0] or b"/"
        kids: dict[bytes, list[bytes]] = {}
        for path in self.nodes:
            if path != b"/":
                parent, _, name = path.rpartition(b"/")
                kids.setdefault(parent or b"/", []).append(name)
        for path, node in self.nodes.items():
            if node.kind == DIR:
                node.names = tuple(sorted(kids.get(path, ())))
        self.by_ino = {node.ino: node for node in self.nodes.values() if node.kind != TREE}
