"""The subcommands that look at files: ls, find, cat and extract."""

from __future__ import annotations

import argparse
import fnmatch
import os
from collections.abc import Iterator

from .. import extract as extracting
from ..archive import Image, Layer
from ..errors import ImgfsError, UsageError
from ..tarindex.reader import BLOCKDEV, CHAR, DIR, FIFO, FILE, SYMLINK
from ..tree import Entry, Tree
from .common import entry_doc, image_for, locate, open_for, tree_for
from .output import Ui, field, human, json_path, mode_string, show_path, timestamp

TYPE_CODES = {"f": FILE, "d": DIR, "l": SYMLINK, "c": CHAR, "b": BLOCKDEV, "p": FIFO}


# -- ls, find, cat -------------------------------------------------------------------------------
def _ls_row(e: Entry, name: str, tty: bool) -> list[str]:
    if e.device and e.kind in ("char", "block"):
        size = f"{e.device[0]},{e.device[1]}"
    else:
        size = human(e.size) if tty else str(e.size)
    shown = name + (" -> " + e.linkname.decode("utf-8", "backslashreplace") if e.linkname is not None else "")
    return [mode_string(e.st_mode), str(e.uid), str(e.gid), size, timestamp(e.mtime), shown]


def ls(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs ls: a directory (or one entry) of the merged view or of a layer."""
    with open_for(args, ui) as a:
        img = image_for(a, args)
        tree, layer = tree_for(img, args.layer)
        key = locate(tree, args.path, layer)
        listing: list[tuple[bytes, Entry]]
        if tree.kind_code(tree.nodes[key]) == DIR:
            cut = len(key) + 1 if key else 0
            listing = [(k[cut:], tree.entry_for(k, tree.nodes[k])) for k in tree.child_paths(key)]
        else:  # a file is listed as itself, under the name given (ls shows a symlink, not its target)
            key = locate(tree, args.path, layer, follow_last=False)
            listing = [(os.fsencode(args.path), tree.entry_for(key, tree.nodes[key]))]
        if args.json:
            ui.json(json_path(key) | {"layer": layer.name if layer else None,
                                      "entries": [entry_doc(e, name) for name, e in listing]})
        elif args.long:
            ui.table(["MODE", "UID", "GID", "SIZE", "MTIME", "NAME"],
                     [_ls_row(e, _shown(name), ui.tty) for name, e in listing])
        else:
            for name, _ in listing:
                ui.line(field(_shown(name)))
    return 0


def _shown(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _find_trees(img: Image, sel: str | None, ui: Ui) -> Iterator[tuple[str, Layer | None, Tree]]:
    """(label, layer, tree) for --layer alone, else every layer bottom to top and then merged."""
    if sel:
        tree, layer = tree_for(img, sel)
        yield layer.name if layer else "merged", layer, tree
        return
    merged = img.merged()
    for la in img.layers:
        try:
            yield la.name, la, img.layer_tree(la.position)
        except ImgfsError as e:  # one unreadable layer must not hide the hits of the others
            ui.warn(f"layer {la.number} skipped: {e}")
    yield "merged", None, merged


def find(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs find: matching paths in each layer and in the merged view, as LAYER<TAB>PATH."""
    name_pat = os.fsencode(args.name) if args.name else None
    path_pat = os.fsencode(args.path) if args.path else None
    if path_pat is not None and not path_pat.startswith(b"/"):
        path_pat = b"/" + path_pat  # every path starts at the root: 'app/*' means '/app/*' (as in a .gitignore)
    want = TYPE_CODES[args.type] if args.type else None
    with open_for(args, ui) as a:
        img = image_for(a, args)
        for label, layer, tree in _find_trees(img, args.layer, ui):
            shown_label = field(label)
            for key, ref in tree.walk():
                if not key:
                    continue
                if name_pat is not None and not fnmatch.fnmatchcase(key.rpartition(b"/")[2], name_pat):
                    continue
                if path_pat is not None and not fnmatch.fnmatchcase(b"/" + key, path_pat):
                    continue
                if want is not None and tree.kind_code(ref) != want:
                    continue
                if args.json:
                    ui.json_line({"layer": label, "number": layer.number if layer else None}
                                 | entry_doc(tree.entry_for(key, ref)))
                else:
                    ui.line(f"{shown_label}\t{show_path(key)}")
    return 0


def cat(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs cat: a regular file's bytes on stdout."""
    with open_for(args, ui) as a:
        img = image_for(a, args)
        tree, layer = tree_for(img, args.layer)
        key = locate(tree, args.path, layer)
        e = tree.entry_for(key, tree.nodes[key])
        if e.kind == "dir":
            raise ImgfsError(f"{args.path}: is a directory")
        if e.kind != "file":
            raise ImgfsError(f"{args.path}: not a regular file ({e.kind})")
        ui.out.flush()
        out = ui.out.buffer
        for chunk in tree.read_all(e.ref):
            out.write(chunk)
        out.flush()
    return 0


# -- extract -------------------------------------------------------------------------------------
def extract(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs extract: copy files and directories out below DIR, safely."""
    if os.path.lexists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"-o {args.output}: exists and is not a directory (give a directory to extract into)")
    with open_for(args, ui) as a:
        img = image_for(a, args)
        tree, layer = tree_for(img, args.layer)
        keys = [locate(tree, p, layer, follow_last=p.endswith("/")) for p in args.paths]
        stats = extracting.extract(tree, keys, args.output, preserve_owner=os.geteuid() == 0, warn=ui.warn)
    ui.info(f"extracted {stats.summary()} to {args.output}")
    for problem in stats.errors:
        ui.error(problem)
    return 1 if stats.errors else 0
