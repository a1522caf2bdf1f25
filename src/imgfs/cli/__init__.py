"""The `imgfs` command line: argument parsing, dispatch, and turning every failure into one line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .. import __version__
from ..errors import ImgfsError, SelectionError
from . import browse, commands
from .output import Ui

OUTPUT_NOTES = """\
output: data goes to stdout, messages to stderr. Listings are tab-separated lines without a header
when stdout is not a terminal (for cut/awk; sizes in bytes); on a terminal the columns are aligned,
with a header and human-readable sizes, cut to the terminal's width. Control characters and bytes that
are not UTF-8 in names are shown as \\t, \\n, \\xNN. JSON is lossless: a name that is UTF-8 is its
text ("path": "/a\\nb"); one that is not comes with its exact bytes in base64 beside it ("path_b64",
"name_b64", "linkname_b64"), and its text shows U+FFFD for the bytes that are not UTF-8.
exit status: 0 ok, 1 a data problem (unreadable archive, path not found, an --image/--layer choice
that matches nothing or too much), 2 a usage error, 130 interrupted, 141 output pipe closed."""

# How a SelectionError names each choice on the command line.
FLAGS = {"image": "--image", "platform": "--platform", "layer": "--layer"}
SELECT_HELP = "pick one image of a multi-image archive: tag, full name or digest prefix"
LAYER_HELP = ("use one layer instead of the merged view: 1-based index (negative counts from the top), "
              "digest prefix, or a substring of its history command")


class Parser(argparse.ArgumentParser):
    """A subcommand's parser: options may come before, between or after its positional arguments.

    Plain argparse fills an optional positional (`ls ARCHIVE [PATH]`) as soon as it meets the first one, so
    `ls IMAGE -l /app` would leave `/app` over; intermixed parsing takes every option first, as Unix tools do.
    """

    _intermixing = False

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # the two passes of parse_known_intermixed_args come back here
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def nonempty(what: str) -> Callable[[str], str]:
    """An argparse type that refuses an empty value (which would otherwise quietly mean "not given")."""
    def check(value: str) -> str:
        if not value:
            raise argparse.ArgumentTypeError(f"an empty {what} names nothing")
        return value
    check.__name__ = what  # argparse names the type in some messages
    return check


def _parent(*adders: str) -> argparse.ArgumentParser:
    """A parent parser holding the option groups shared by several subcommands."""
    p = argparse.ArgumentParser(add_help=False)
    if "common" in adders:
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no warnings, notes or progress on stderr")
    if "cache" in adders:
        _cache_options(p, argparse.SUPPRESS)
    if "archive" in adders:
        p.add_argument("archive", metavar="ARCHIVE", type=nonempty("archive path"),
                       help="image tarball (docker save, podman save, OCI archive), a directory holding one "
                            "unpacked or an OCI layout (also oci:DIR[:REF], dir:DIR), a registry image "
                            "docker://HOST/REPO[:TAG|@DIGEST], or '-' for a pipe")
        _registry_options(p)
    if "select" in adders:
        p.add_argument("--image", metavar="REF", type=nonempty("image reference"), help=SELECT_HELP)
        p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", type=nonempty("platform"),
                       help="pick the image of this platform")
    if "layer" in adders:
        p.add_argument("--layer", metavar="SEL", type=nonempty("layer selector"), help=LAYER_HELP)
    if "json" in adders:
        p.add_argument("--json", action="store_true", help="print JSON instead of tab-separated lines")
    if "partial" in adders:
        p.add_argument("--partial", action="store_true",
                       help="when a layer cannot be read, show the merged view without it (with a warning) "
                            "instead of failing")
    return p


def _registry_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("registry (for ARCHIVE given as docker://HOST[:PORT]/REPO[:TAG|@DIGEST])")
    g.add_argument("--creds", metavar="USER[:PASS]", help="credentials (default: the auth files, as skopeo)")
    g.add_argument("--tls-verify", metavar="BOOL", type=_bool, default=True,
                   help="verify TLS and require HTTPS (default true; false also allows plain HTTP)")
    g.add_argument("--cert-dir", metavar="DIR", help="CA certificates (*.crt) and client certificates "
                                                      "(*.cert with *.key) for the registry")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _cache_options(p: argparse.ArgumentParser, default: object) -> None:
    # Accepted before or after the subcommand: the subcommand's copy must not reset the main one.
    p.add_argument("--cache-dir", metavar="DIR", default=None if default is None else default,
                   help="where layer indexes are cached (default $IMGFS_CACHE_DIR, else $XDG_CACHE_HOME/imgfs)")
    p.add_argument("--no-cache", action="store_true", default=False if default is None else default,
                   help="neither read nor write the index cache")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="imgfs", formatter_class=fmt, epilog=OUTPUT_NOTES,
        description="Look inside a saved container image tarball (docker save, podman save, OCI archive) "
                    "without Docker and without extracting it.")
    parser.add_argument("--version", action=commands.VersionAction, version=f"imgfs {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", default=False,
                        help="no warnings, notes or progress on stderr")
    _cache_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    base = _parent("common", "cache", "archive", "select")
    layer, as_json = _parent("layer", "partial"), _parent("json")

    def add(name: str, helptext: str, parents: list[argparse.ArgumentParser], func: commands.Command,
            epilog: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".",
                           parents=parents, formatter_class=fmt,
                           epilog=(epilog + "\n\n" if epilog else "") + OUTPUT_NOTES)
        p.set_defaults(func=func)
        return p

    add("images", "list the images an archive holds (refs, digest, platform, layer count)", [base, as_json],
        commands.images, "Columns: name, refs (comma-separated), manifest digest, config digest, platform, layers.\n"
        "Artifacts (attestations, signatures, SBOMs: never runnable) follow, four columns each: digest, kind,\n"
        "artifactType or config media type, the image they describe.")
    add("attestations", "list the attestations of an image (SBOM, provenance), as the mount's attestations/ has them",
        [base, as_json], commands.attestations,
        "Lines: NAME<TAB>SIZE, one per statement, named by predicate type (sbom.spdx.json, provenance.json).\n"
        "--json adds each statement itself. buildx attestations and OCI 1.1 artifacts whose subject is the\n"
        "image are both shown.")
    p = add("layers", "list the layers of an image, bottom to top", [base, as_json], commands.layers,
            "Columns: number, directory name, digest, blob size, tar entries, FILES and BYTES (regular files the\n"
            "layer writes, new or changed), WASTED (bytes of those that later layers delete or shadow),\n"
            "created, history command.")
    p.add_argument("--names", action="store_true", help="only the layer directory names, one a line (fast)")
    p = add("diff", "show what each layer adds, modifies and deletes", [base, layer, as_json], commands.diff,
            "Each layer is compared with the merged layers below it: whiteouts and opaque directories show as\n"
            "deletions of what they hide. Lines: LAYER<TAB>A|M|D<TAB>TYPE (old->new if it changed)<TAB>\n"
            "SIZE CHANGE<TAB>WHAT<TAB>PATH. WHAT, for M, lists what changed: type, content (the size, or the\n"
            "bytes, read from both layers), target, device, mode, owner, mtime, xattrs; '-' for a file written\n"
            "again exactly as it was (and for A and D). Directories and other non-files written again\n"
            "unchanged are not listed. Per-layer totals (files and bytes written, bytes wasted, counts)\n"
            "head each layer on a terminal, are in --json, and are columns of `imgfs layers`.")
    p = add("ls", "list a directory of the merged root filesystem, or of one layer", [base, layer, as_json],
            browse.ls, "With -l columns: mode, uid, gid, size (major,minor for devices), mtime (UTC), "
                         "name (-> target for symlinks).")
    p.add_argument("path", metavar="PATH", nargs="?", default="/", type=nonempty("path"),
                   help="directory or file (default /)")
    p.add_argument("-l", dest="long", action="store_true", help="long listing: mode, owner, size, mtime")
    p = add("find", "find paths in every layer and in the merged view", [base, layer, as_json], browse.find,
            "Prints LAYER<TAB>PATH for each hit: every layer bottom to top, then the merged view (labelled\n"
            "'merged'). With --json: JSON Lines, one object per hit. Globs are case-sensitive, as in find(1).")
    p.add_argument("--name", metavar="GLOB", help="match the last path component (e.g. 'trace.log', '*.so')")
    p.add_argument("--path", metavar="GLOB", help="match the whole path, which starts with '/' ('app/*' is "
                                                  "taken from the root, as '/app/*')")
    p.add_argument("--type", choices=["f", "d", "l", "c", "b", "p"], help="file, dir, symlink, char, block, fifo")
    p = add("cat", "write a file's bytes to stdout (symlinks followed inside the image)", [base, layer],
            browse.cat)
    p.add_argument("path", metavar="PATH", type=nonempty("path"), help="file in the image")
    p = add("extract", "copy files or directories out of the image into a directory", [base, layer],
            browse.extract,
            "Each PATH keeps its place below DIR (/etc/passwd -> DIR/etc/passwd). Modes, mtimes, symlinks\n"
            "(targets as stored) and hard links are kept; owners and device nodes only when run as root.\n"
            "Nothing outside DIR is ever created or followed: symlinks in DIR are never written through.")
    p.add_argument("paths", metavar="PATH", nargs="+", type=nonempty("path"),
                   help="file or directory in the image ('/' for everything)")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="destination directory (created if missing)")
    p = add("mount", "mount the image read-only with FUSE: layers/<name>/ and merged/",
            [_parent("common", "cache", "archive")], commands.mount)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    p.add_argument("--image", metavar="REF", type=nonempty("image reference"), help=SELECT_HELP)
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", type=nonempty("platform"),
                   help="pick the image of this platform")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground until unmounted")
    p.add_argument("-o", dest="options", metavar="OPTIONS", action="append",
                   help="comma-separated FUSE mount options (may be repeated); uid=N,gid=N,umask=M "
                        "show every entry with that owner, group and mode 0777 & ~umask")
    p.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    p.add_argument("--debug", action="store_true", help="log FUSE operations (implies --foreground)")
    p.add_argument("--log-file", metavar="FILE", help="where a background mount writes its log")
    p.add_argument("--fuse", choices=["2", "3"], help="the libfuse version to drive (default: $IMGFS_FUSE, else 3 "
                   "where libfuse3.so.3 loads, else 2); this help's description says which is in use")
    p.add_argument("--trusted-image", action="store_true",
                   help="allow -o dev and -o suid, which make the image's device nodes and set-user-ID files act "
                        "on this host (refused without it: with them, an image's 'c 1:5' node reads /dev/zero)")
    for action in p._actions:  # -h also names the FUSE backend, looked up only when asked for
        if isinstance(action, argparse._HelpAction):
            action.__class__ = commands.MountHelp
    p = sub.add_parser("umount", help="unmount an imgfs mount", description="Unmount an imgfs mount.",
                       parents=[_parent("common")])
    p.set_defaults(func=commands.umount)
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--lazy", action="store_true", help="detach now, clean up when no longer busy")
    add("verify", "check the image's config, manifest and layers against their digests (hashes every blob)",
        [base, as_json], commands.verify,
        "Without --image/--platform every image of the archive is checked. Lines: IMAGE<TAB>OK|FAILED<TAB>\n"
        "WHAT<TAB>EXPECTED<TAB>FOUND (or the error). Exit status 1 when any check fails.")
    p = sub.add_parser("cache", help="show (info) or empty (clear) the layer index cache", formatter_class=fmt,
                       description="Show the layer index cache: files and bytes per kind (shared: member indexes "
                                   "by diff_id, checked against each archive's own headers; ptr: which of "
                                   "them each blob matched; idx: member indexes of gzip layers, by where "
                                   "the blob sits; gz: gzip seek points; zst: decompressed zstd layers), "
                                   "or empty it.",
                       epilog="info prints PATH<TAB>FILES<TAB>BYTES, one line per kind, then the whole cache.",
                       parents=[_parent("common", "cache", "json")])
    p.set_defaults(func=commands.cache)
    p.add_argument("action", nargs="?", choices=["info", "clear"], default="info", help="info (default) or clear")
    p = sub.add_parser("completion", help="print a shell completion script",
                       description="Print a shell completion script: subcommands, options, archive files, image "
                                   "labels, layer names and paths inside the image.",
                       epilog='Load it with:  eval "$(imgfs completion bash)"  (or zsh, e.g. in ~/.bashrc / ~/.zshrc)',
                       parents=[_parent("common")])
    p.set_defaults(func=commands.completion)
    p.add_argument("shell", choices=["bash", "zsh"])
    return parser


def run() -> NoReturn:
    """The console script: main(), then exit without tearing the interpreter down (~15 ms a command)."""
    status = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            stream.flush()
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors (argparse already printed them)
        return e.code if isinstance(e.code, int) else 2
    ui = Ui(quiet=args.quiet)
    try:
        status = args.func(args, ui) or 0
        ui.out.flush()
        return status
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        ui.error("interrupted")
        return 130
    except SelectionError as e:  # the library names the choice in its words; here it is an option
        ui.error(e.worded(FLAGS))
        return e.exit_code
    except ImgfsError as e:
        ui.error(str(e))
        return e.exit_code
    except OSError as e:
        ui.error(_os_message(e))
        return 1
    except Exception as e:  # a bug: still one line, unless the developer asks for the traceback
        if os.environ.get("IMGFS_DEBUG"):
            raise
        ui.error(f"internal error: {type(e).__name__}: {e} (set IMGFS_DEBUG=1 for a traceback)")
        return 1
    finally:
        if ui.progress:
            ui.progress.clear()


def _os_message(e: OSError) -> str:
    name = e.filename if e.filename is not None else ""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    return f"{name}: {e.strerror or e}" if name else str(e.strerror or e)


def _silence_stdout() -> None:
    """The reader went away (e.g. `| head`): drop further output so the exit flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
