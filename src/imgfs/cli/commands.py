"""The subcommands: each opens the archive, picks an image and a tree, and prints through Ui."""

from __future__ import annotations

import argparse
import fnmatch
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

from .. import extract as extracting
from ..archive import Archive, Image, Layer, open_archive
from ..errors import FormatError, ImgfsError, NotFoundError
from ..tarindex.reader import BLOCKDEV, CHAR, DIR, FIFO, FILE, SYMLINK
from ..tarindex.store import Store
from ..tree import Entry, Tree
from ..verify import verify_image
from . import changes
from .completion import script as completion_script
from .output import Ui, clip, created, field, human, mode_string, short_digest, show_path, timestamp

Command = Callable[[argparse.Namespace, Ui], "int | None"]
TYPE_CODES = {"f": FILE, "d": DIR, "l": SYMLINK, "c": CHAR, "b": BLOCKDEV, "p": FIFO}


# -- shared steps -------------------------------------------------------------------------------
def open_for(args: argparse.Namespace, ui: Ui) -> Archive:
    """Open the archive named on the command line, with warnings and progress going to the Ui."""
    try:
        os.stat(args.archive)
    except OSError as e:  # say it once and plainly, before the engine tries to parse anything
        raise FormatError(f"{args.archive}: {e.strerror}") from None
    return open_archive(args.archive, warn=ui.warn, progress=ui.progress, cache_dir=cache_dir(args),
                        use_cache=not args.no_cache)


def cache_dir(args: argparse.Namespace) -> str | None:
    """--cache-dir, else $IMGFS_CACHE_DIR, else None (the engine's default)."""
    return args.cache_dir or os.environ.get("IMGFS_CACHE_DIR") or None


def image_for(a: Archive, args: argparse.Namespace) -> Image:
    """The one image chosen by --image/--platform."""
    return a.image(getattr(args, "image", None), getattr(args, "platform", None))


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


def entry_doc(e: Entry, name: str | None = None) -> dict:
    """An Entry as a JSON object."""
    doc = {"path": show_path(e.path), "type": e.kind, "mode": f"{e.mode:04o}", "uid": e.uid, "gid": e.gid,
           "size": e.size, "mtime": e.mtime, "nlink": e.nlink, "ino": e.ino}
    if name is not None:
        doc = {"name": name} | doc
    if e.linkname is not None:
        doc["linkname"] = e.linkname.decode("utf-8", "backslashreplace")
    if e.device is not None and e.kind in ("char", "block"):
        doc["device"] = list(e.device)
    return doc


# -- images, layers ------------------------------------------------------------------------------
def images(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs images: every image of the archive."""
    with open_for(args, ui) as a:
        chosen = a.select(args.image, args.platform) if args.image or args.platform else a.images
        if args.json:
            ui.json({"archive": args.archive, "kind": a.kind, "images": [
                {"label": i.label, "refs": i.refs, "digest": i.digest, "config_digest": i.config_digest,
                 "platform": i.platform, "layers": len(i.layers),
                 "diff_ids": [la.diff_id for la in i.layers]} for i in chosen]})
            return 0
        rows = [[i.label, ",".join(i.refs) or "-", i.digest or "-", i.config_digest or "-", i.platform or "-",
                 str(len(i.layers))] for i in chosen]
        short = [r[:2] + [short_digest(i.digest), short_digest(i.config_digest)] + r[4:]
                 for r, i in zip(rows, chosen, strict=True)]
        ui.table(["NAME", "REFS", "DIGEST", "CONFIG", "PLATFORM", "LAYERS"], rows, short)
    return 0


def _layer_facts(layer: Layer, ui: Ui) -> tuple[int | None, str | None]:
    """Member count and compression of a layer; None where its blob cannot be read."""
    try:
        return len(layer.index()), layer.compression
    except ImgfsError as e:
        ui.warn(f"layer {layer.number}: {e}")
        return None, None


def _num(n: int | None, size: bool = False, tty: bool = False) -> str:
    if n is None:
        return "-"
    return human(n) if size and tty else str(n)


def layers(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs layers: one row per layer, bottom to top, with what each writes and what of it is wasted."""
    with open_for(args, ui) as a:
        img = image_for(a, args)
        if args.names:  # for shell completion: no layer is read
            for la in img.layers:
                ui.line(field(la.name))
            return 0
        facts = [_layer_facts(la, ui) for la in img.layers]
        totals = changes.layer_totals(img, ui.warn)
        if args.json:
            ui.json({"archive": args.archive, "image": img.label, "platform": img.platform, "layers": [
                {"number": la.number, "name": la.name, "digest": la.digest, "diff_id": la.diff_id,
                 "member": la.member, "size": la.blob_size, "compression": comp, "entries": n,
                 "files": t.files if t else None, "bytes": t.bytes if t else None,
                 "wasted": t.wasted if t else None, "created": la.created, "created_by": la.created_by}
                for la, (n, comp), t in zip(img.layers, facts, totals, strict=True)]})
            return 0
        header = ["#", "NAME", "DIGEST", "SIZE", "ENTRIES", "FILES", "BYTES", "WASTED", "CREATED", "COMMAND"]
        rows = [[str(la.number), clip(la.name, 48) if ui.tty else la.name,
                 short_digest(la.digest) if ui.tty else la.digest or "-", _num(la.blob_size, True, ui.tty),
                 _num(n), _num(t and t.files), _num(t and t.bytes, True, ui.tty), _num(t and t.wasted, True, ui.tty),
                 created(la.created) if ui.tty else la.created or "-", la.created_by or "-"]
                for la, (n, _), t in zip(img.layers, facts, totals, strict=True)]
        ui.table(header, rows)
    return 0


def diff(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs diff: per layer, the paths it adds, modifies and deletes, with totals."""
    with open_for(args, ui) as a:
        img = image_for(a, args)
        positions = [img.find_layer(args.layer).position] if args.layer else list(range(len(img.layers)))
        results = changes.layer_changes(img, positions, ui.warn)
        if args.json:
            ui.json({"archive": args.archive, "image": img.label, "platform": img.platform, "layers": [
                {"number": r.layer.number, "name": r.layer.name, "totals": r.totals.as_dict(),
                 "changes": [{"change": c.code, "path": show_path(c.path), "type": c.kind, "old_type": c.old_kind,
                              "size_change": c.size_change} for c in r.changes]} for r in results]})
            return 0
        for r in results:
            if ui.tty:
                t = r.totals
                ui.line(f"== {r.layer.name}: {t.files} files, {human(t.bytes)} written, {human(t.wasted)} wasted; "
                        f"{t.added} added, {t.modified} modified, {t.deleted} deleted")
            label = field(r.layer.name)
            for c in r.changes:
                kind = f"{c.old_kind}->{c.kind}" if c.old_kind else c.kind
                size = f"{c.size_change:+d}" if not ui.tty else ("+" if c.size_change >= 0 else "-") + human(
                    abs(c.size_change))
                if ui.tty:
                    ui.line(f"{c.code} {kind:<12} {size:>7}  {show_path(c.path)}")
                else:
                    ui.line(f"{label}\t{c.code}\t{kind}\t{size}\t{show_path(c.path)}")
    return 0


# -- ls, find, cat -------------------------------------------------------------------------------
def _ls_row(e: Entry, name: str) -> list[str]:
    size = f"{e.device[0]},{e.device[1]}" if e.device and e.kind in ("char", "block") else str(e.size)
    shown = name + (" -> " + e.linkname.decode("utf-8", "backslashreplace") if e.linkname is not None else "")
    return [mode_string(e.st_mode), str(e.uid), str(e.gid), size, timestamp(e.mtime), shown]


def ls(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs ls: a directory (or one entry) of the merged view or of a layer."""
    with open_for(args, ui) as a:
        img = image_for(a, args)
        tree, layer = tree_for(img, args.layer)
        key = locate(tree, args.path, layer)
        if tree.kind_code(tree.nodes[key]) == DIR:
            cut = len(key) + 1 if key else 0
            listing = [(k[cut:].decode("utf-8", "backslashreplace"), tree.entry_for(k, tree.nodes[k]))
                       for k in tree.child_paths(key)]
        else:  # a file is listed as itself, under the name given (ls shows a symlink, not its target)
            key = locate(tree, args.path, layer, follow_last=False)
            listing = [(args.path, tree.entry_for(key, tree.nodes[key]))]
        if args.json:
            ui.json({"path": show_path(key), "layer": layer.name if layer else None,
                     "entries": [entry_doc(e, name) for name, e in listing]})
        elif args.long:
            ui.table(["MODE", "UID", "GID", "SIZE", "MTIME", "NAME"], [_ls_row(e, n) for n, e in listing])
        else:
            for name, _ in listing:
                ui.line(field(name))
    return 0


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
    name_pat = args.name.encode("utf-8", "surrogateescape") if args.name else None
    path_pat = args.path.encode("utf-8", "surrogateescape") if args.path else None
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
    with open_for(args, ui) as a:
        img = image_for(a, args)
        tree, layer = tree_for(img, args.layer)
        keys = [locate(tree, p, layer, follow_last=p.endswith("/")) for p in args.paths]
        stats = extracting.extract(tree, keys, args.output, preserve_owner=os.geteuid() == 0, warn=ui.warn)
    ui.info(f"extracted {stats.summary()} to {args.output}")
    for problem in stats.errors:
        ui.error(problem)
    return 1 if stats.errors else 0


# -- mount, umount -------------------------------------------------------------------------------
def _fuse() -> ModuleType:
    """imgfs.fuse, imported only when a mount command runs (other commands work without libfuse)."""
    try:
        from .. import fuse
    except (ImportError, OSError) as e:  # fusepy raises OSError when libfuse.so.2 is missing
        raise ImgfsError(f"FUSE is not available: {e}") from None
    if not hasattr(fuse, "mount"):
        raise ImgfsError("FUSE support (imgfs.fuse) is not installed")
    return fuse


def mount(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs mount: a read-only FUSE view of the image."""
    _fuse().mount(args.archive, args.mountpoint, image=args.image, platform=args.platform,
                  foreground=args.foreground or args.debug, options=",".join(args.options) if args.options else None,
                  allow_other=args.allow_other, debug=args.debug, log_file=args.log_file, warn=ui.warn)
    return 0


# -- verify, cache -------------------------------------------------------------------------------
def verify(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs verify: hash every blob of the chosen image(s) and compare with the recorded digests."""
    with open_for(args, ui) as a:
        chosen = [image_for(a, args)] if args.image or args.platform else a.images
        report, failed, total = [], 0, 0
        for img in chosen:
            checks = verify_image(img, ui.progress)
            total += len(checks)
            failed += sum(not c.ok for c in checks)
            report.append((img, checks))
            if not args.json:
                name = img.label + (f" [{img.platform}]" if img.platform and len(chosen) > 1 else "")
                ui.table(["IMAGE", "RESULT", "WHAT", "EXPECTED", "FOUND"], [
                    [name, "OK" if c.ok else "FAILED", c.what, c.expected or "-", c.error or c.actual or "-"]
                    for c in checks])
        if args.json:
            ui.json({"archive": args.archive, "ok": failed == 0, "images": [
                {"label": img.label, "platform": img.platform, "ok": all(c.ok for c in checks),
                 "checks": [c.__dict__ for c in checks]} for img, checks in report]})
    if failed:
        ui.error(f"{args.archive}: {failed} of {total} checks failed")
        return 1
    ui.info(f"{args.archive}: all {total} checks passed")
    return 0


def cache(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs cache: what the index cache holds, or clear it."""
    store = Store(cache_dir(args))
    if args.clear:
        freed = store.clear()
        ui.info(f"cache {store.root}: {human(freed)} freed")
        return 0
    kinds: dict[Path, list[int]] = {}  # v1/idx, v1/gz, v1/zst -> [files, bytes]
    for path, size, _ in store.files():
        k = kinds.setdefault(path.parent, [0, 0])
        k[0] += 1
        k[1] += size
    total = [sum(v[0] for v in kinds.values()), sum(v[1] for v in kinds.values())]
    if args.json:
        ui.json({"path": str(store.root), "files": total[0], "bytes": total[1],
                 "kinds": {d.name: {"path": str(d), "files": v[0], "bytes": v[1]} for d, v in sorted(kinds.items())}})
        return 0
    size = human if ui.tty else str
    rows = [[str(d), str(v[0]), size(v[1])] for d, v in sorted(kinds.items())]
    rows.append([str(store.root), str(total[0]), size(total[1])])
    ui.table(["PATH", "FILES", "BYTES"], rows)
    return 0


def completion(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs completion: a bash or zsh completion script on stdout."""
    from . import build_parser  # the parser imports this module

    ui.out.write(completion_script(args.shell, build_parser()))
    return 0


def umount(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs umount: undo imgfs mount."""
    _fuse().umount(args.mountpoint, lazy=args.lazy)
    return 0
