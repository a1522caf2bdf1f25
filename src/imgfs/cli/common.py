"""Steps every subcommand shares: open the archive, choose the image and the tree, find a path."""

from __future__ import annotations

import argparse
import os
import sys

from ..archive import Archive, Image, Layer, open_archive
from ..errors import FormatError, NotFoundError, UsageError
from ..stores import is_stream, local_path
from ..tree import Entry, Tree
from .output import Ui, json_name, json_path

# What can be answered in one pass over a pipe: listings, and files whose path is named here.
ONE_PASS = ("images", "attestations", "layers", "ls", "find", "diff", "cat", "extract")


def open_for(args: argparse.Namespace, ui: Ui) -> Archive:
    """Open the archive named on the command line, with warnings and progress going to the Ui.

    `-`, a FIFO or a device is read in one pass (stream.py), keeping only the files that cat and
    extract name; a command that needs random access says to save the archive first.
    """
    if args.archive == "-" or is_stream(args.archive):
        refuse_stream(args)
        from ..stream import open_stream_archive

        keep = [args.path] if args.command == "cat" else list(args.paths) if args.command == "extract" else []
        return open_stream_archive(sys.stdin.buffer if args.archive == "-" else args.archive, keep=keep,
                                   subtrees=args.command == "extract", warn=ui.warn)
    path = local_path(args.archive)  # None: a registry reference, nothing on disk to look at
    if path is not None:
        try:
            os.stat(path)
        except OSError as e:  # say it once and plainly, before the engine tries to parse anything
            raise FormatError(f"{args.archive}: {e.strerror}") from None
    return open_archive(args.archive, warn=ui.warn, progress=ui.progress, cache_dir=cache_dir(args),
                        use_cache=not args.no_cache, store_options=store_options(args))


def store_options(args: argparse.Namespace) -> dict[str, object]:
    """--creds, --tls-verify and --cert-dir, for a registry reference (other stores ignore them)."""
    if getattr(args, "creds", None):
        from ..stores.auth import hide_from_process_title  # here: only --creds needs it

        hide_from_process_title(args.creds.partition(":")[2])
    return {"creds": getattr(args, "creds", None), "tls_verify": getattr(args, "tls_verify", True),
            "cert_dir": getattr(args, "cert_dir", None)}


def refuse_stream(args: argparse.Namespace) -> None:
    """UsageError for a command that cannot work in one pass over a pipe."""
    if (args.archive == "-" or is_stream(args.archive)) and args.command not in ONE_PASS:
        raise UsageError(f"{args.command} needs random access to the archive, which a pipe cannot give: "
                         "save it to a file first (docker save -o image.tar ...)")


def cache_dir(args: argparse.Namespace) -> str | None:
    """--cache-dir, else $IMGFS_CACHE_DIR, else None (the engine's default)."""
    return args.cache_dir or os.environ.get("IMGFS_CACHE_DIR") or None


def image_for(a: Archive, args: argparse.Namespace) -> Image:
    """The one image chosen by --image/--platform (its merged view partial with --partial)."""
    img = a.image(getattr(args, "image", None), getattr(args, "platform", None))
    img.partial = getattr(args, "partial", False)
    return img


def tree_for(img: Image, sel: str | None) -> tuple[Tree, Layer | None]:
    """The merged tree, or the tree of the layer that --layer names."""
    if not sel:
        return img.merged(), None
    layer = img.find_layer(sel)
    return img.layer_tree(layer.position), layer


def where(layer: Layer | None) -> str:
    """How error messages name the tree that was searched."""
    return f"layer {layer.name!r}" if layer else "the merged view"


def locate(tree: Tree, path: str, layer: Layer | None, follow_last: bool = True) -> bytes:
    """The tree key a user path leads to, following symlinks inside the image root."""
    key = tree.resolve(path, follow_last=follow_last)
    if key is None and follow_last and tree.resolve(path, follow_last=False) is not None:
        raise NotFoundError(f"{path}: dangling or looping symlink in {where(layer)}")
    if key is None:
        raise NotFoundError(f"{path}: no such file or directory in {where(layer)}")
    return key


def entry_doc(e: Entry, name: bytes | str | None = None) -> dict:
    """An Entry as a JSON object (names lossless: see json_name)."""
    doc = json_path(e.path) | {"type": e.kind, "mode": f"{e.mode:04o}", "uid": e.uid, "gid": e.gid,
                               "size": e.size, "mtime": e.mtime, "nlink": e.nlink, "ino": e.ino}
    if name is not None:
        doc = json_name("name", name) | doc
    if e.linkname is not None:
        doc |= json_name("linkname", e.linkname)
    if e.device is not None and e.kind in ("char", "block"):
        doc["device"] = list(e.device)
    return doc
