"""The subcommands about archives, images and layers: images, layers, diff, verify, cache, mount, completion."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from .. import changes
from ..archive import Layer
from ..errors import ImgfsError
from ..tarindex.store import Store
from ..verify import verify_image
from .common import cache_dir, image_for, open_for, refuse_stream, store_options
from .completion import script as completion_script
from .output import Ui, clip, created, field, human, json_name, json_path, plural, short_digest, show_path

Command = Callable[[argparse.Namespace, Ui], "int | None"]


# -- images, layers ------------------------------------------------------------------------------
def images(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs images: every image of the archive."""
    with open_for(args, ui) as a:
        chosen = a.select(args.image, args.platform) if args.image or args.platform else a.images
        described = {i.digest: i.label for i in a.images if i.digest}
        if args.json:
            ui.json(json_name("archive", args.archive) | {"kind": a.kind, "images": [
                {"label": i.label, "refs": i.refs, "digest": i.digest, "config_digest": i.config_digest,
                 "platform": i.platform, "layers": len(i.layers),
                 "diff_ids": [la.diff_id for la in i.layers]} for i in chosen],
                "artifacts": [{"kind": d.kind, "digest": d.digest, "type": d.artifact_type, "subject": d.subject,
                               "describes": described.get(d.subject or ""), "blobs": len(d.blobs)}
                              for d in a.artifacts]})
            return 0
        rows = [[i.label, ",".join(i.refs) or "-", i.digest or "-", i.config_digest or "-", i.platform or "-",
                 str(len(i.layers))] for i in chosen]
        short = [r[:2] + [short_digest(i.digest), short_digest(i.config_digest)] + r[4:]
                 for r, i in zip(rows, chosen, strict=True)]
        ui.table(["NAME", "REFS", "DIGEST", "CONFIG", "PLATFORM", "LAYERS"], rows, short)
        if a.artifacts:  # never runnable: apart from the images, four columns where images have six
            if ui.tty:
                ui.line("")
            rows = [[d.digest, d.kind, d.artifact_type or "-", described.get(d.subject or "") or d.subject or "-"]
                    for d in a.artifacts]
            ui.table(["ARTIFACT", "KIND", "TYPE", "DESCRIBES"], rows,
                     [[short_digest(r[0])] + r[1:3] + [short_digest(r[3]) if r[3].startswith("sha256:") else r[3]]
                      for r in rows])
    return 0


def attestations(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs attestations: the statements attached to the image (SBOM, provenance), as the mount shows them."""
    with open_for(args, ui) as a:
        img = image_for(a, args)
        files = img.attestations()
        if args.json:
            ui.json({"archive": args.archive, "image": img.label, "digest": img.digest, "attestations": [
                {"name": name, "size": len(data), "statement": _as_json(data)} for name, data in files]})
            return 0
        if not files:
            ui.info(f"{img.label}: no attestations")
        ui.table(["NAME", "SIZE"], [[name, str(len(data))] for name, data in files])
    return 0


def _as_json(data: bytes) -> object:
    """A statement as JSON where it is JSON, else None."""
    import json  # here: only --json needs it

    try:
        return json.loads(data)
    except ValueError:
        return None


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
            ui.json(json_name("archive", args.archive) | {"image": img.label, "platform": img.platform, "layers": [
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
        # On a terminal the table fits its width: the command goes first (the name says it too), then
        # the name is cut, then the creation time and the digest go.
        ui.table(header, rows, fit=[(9, 0), (1, 24), (8, 0), (2, 0), (1, 12)])
    return 0


def diff(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs diff: per layer, the paths it adds, modifies and deletes, with totals."""
    with open_for(args, ui) as a:
        img = image_for(a, args)
        positions = [img.find_layer(args.layer).position] if args.layer else list(range(len(img.layers)))
        results = changes.layer_changes(img, positions)
        if args.json:
            ui.json(json_name("archive", args.archive) | {"image": img.label, "platform": img.platform, "layers": [
                {"number": r.layer.number, "name": r.layer.name, "totals": r.totals.as_dict(),
                 "changes": [{"change": c.code} | json_path(c.path) | {
                     "type": c.kind, "old_type": c.old_kind, "size_change": c.size_change, "what": list(c.what)}
                     for c in r.changes]} for r in results]})
            return 0
        for r in results:
            if ui.tty:
                t = r.totals
                ui.line(f"== {r.layer.name}: {plural(t.files, 'file')}, {human(t.bytes)} written, "
                        f"{human(t.wasted)} wasted; {t.added} added, {t.modified} modified, {t.deleted} deleted")
            label = field(r.layer.name)
            for c in r.changes:
                kind = f"{c.old_kind}->{c.kind}" if c.old_kind else c.kind
                what = ",".join(c.what) or "-"
                if ui.tty:
                    size = ("+" if c.size_change >= 0 else "-") + human(abs(c.size_change))
                    ui.line(f"{c.code} {kind:<12} {size:>7}  {what:<16} {show_path(c.path)}")
                else:
                    ui.line(f"{label}\t{c.code}\t{kind}\t{c.size_change:+d}\t{what}\t{show_path(c.path)}")
    return 0


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


def _backend_line() -> str:
    """Which libfuse a mount would use (loading it only now)."""
    try:
        return _fuse().describe_backend()
    except ImgfsError as e:
        return f"FUSE: {e}"


class VersionAction(argparse.Action):
    """--version: imgfs's, and the FUSE backend a mount would use."""

    def __init__(self, option_strings: list[str], version: str, dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str = "show the version and the FUSE backend, and exit") \
            -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.version = version

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        sys.stdout.write(f"{self.version}\n{_backend_line()}\n")
        parser.exit()


class MountHelp(argparse._HelpAction):
    """mount -h: the help, with the FUSE backend in use."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:  # type: ignore[override]
        parser.description = f"{parser.description}\n{_backend_line()}"
        super().__call__(parser, *args)  # type: ignore[arg-type]


def mount(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs mount: a read-only FUSE view of the image."""
    refuse_stream(args)
    _fuse().mount(args.archive, args.mountpoint, image=args.image, platform=args.platform,
                  foreground=args.foreground or args.debug, options=",".join(args.options) if args.options else None,
                  allow_other=args.allow_other, debug=args.debug, log_file=args.log_file, warn=ui.warn,
                  cache_dir=cache_dir(args), use_cache=not args.no_cache, store_options=store_options(args),
                  fuse=args.fuse, trusted_image=args.trusted_image)
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
            ui.json(json_name("archive", args.archive) | {"ok": failed == 0, "images": [
                {"label": img.label, "platform": img.platform, "ok": all(c.ok for c in checks),
                 "checks": [c.__dict__ for c in checks]} for img, checks in report]})
    if failed:
        ui.error(f"{args.archive}: {failed} of {plural(total, 'check')} failed")
        return 1
    ui.info(f"{args.archive}: {'the' if total == 1 else 'all'} {plural(total, 'check')} passed")
    return 0


def cache(args: argparse.Namespace, ui: Ui) -> int:
    """imgfs cache info|clear: what the index cache holds, or empty it."""
    store = Store(cache_dir(args))
    if args.action == "clear":
        freed = store.clear()
        ui.info(f"cache {store.root}: {human(freed)} freed")
        return 0
    kinds: dict[Path, list[int]] = {}  # v1/shared, v1/ptr, v1/idx, v1/gz, v1/zst -> [files, bytes]
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
