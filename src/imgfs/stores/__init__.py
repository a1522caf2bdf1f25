"""Where an image's blobs come from: one store per kind of place, each behind the same small protocol.

A store answers by path in the namespace the format parsers know (`manifest.json`, `index.json`,
`blobs/sha256/<hex>`, `<id>/layer.tar`): an image tarball by its members, a directory by its files, a
registry by the digests it serves. `open_store` picks the store from what the user named.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from ..errors import FormatError
from .base import BlobStore

__all__ = ["BlobStore", "absolute", "is_reference", "is_stream", "local_path", "open_store", "split_transport"]


def _tarball(name: str, path: str, ref: str | None, options: dict[str, object]) -> BlobStore:
    from .tarball import TarballStore  # here: only the store that is used is imported

    return TarballStore(path, ref=ref, cache=options.get("cache"), progress=options.get("progress"))  # type: ignore[arg-type]


def _directory(name: str, path: str, ref: str | None, options: dict[str, object]) -> BlobStore:
    from .layout import DirectoryStore

    if not any(os.path.lexists(os.path.join(path, top)) for top in ("manifest.json", "index.json")):
        raise FormatError("is a directory, not an image archive or layout (no manifest.json or index.json in it)")
    return DirectoryStore(path, ref=ref)


def _stream(name: str, path: str, ref: str | None, options: dict[str, object]) -> BlobStore:
    raise FormatError("is a pipe or a device: it can be read only once, in one pass (imgfs reads it so "
                      "when named as '-' or as such a file: find, cat, extract, ls, layers, diff, images); "
                      "for anything else, save it to a file first")


def _registry(name: str, rest: str, ref: str | None, options: dict[str, object]) -> BlobStore:
    from .registry import open_registry  # here: few commands use the network, every one imports imgfs

    return open_registry(name, rest, ref, options)


def is_stream(path: str) -> bool:
    """Whether `path` is a FIFO, a character device or a socket: bytes that can be read once, without seeking."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


# Transport prefix (skopeo's syntax) -> opener. A plain path has no prefix and goes to the probes below.
# Each opener takes (what the user wrote, the path or reference after the prefix, an image ref or None, options).
Opener = Callable[[str, str, "str | None", "dict[str, object]"], BlobStore]
TRANSPORTS: dict[str, Opener] = {
    "docker-archive:": _tarball,
    "oci-archive:": _tarball,
    "oci:": _directory,  # an OCI image layout directory, oci:DIR[:REF]
    "dir:": _directory,  # skopeo's dir: layout
    "docker://": _registry,  # a registry, docker://HOST[:PORT]/REPO[:TAG|@DIGEST]
}
# Plain paths: (probe, opener), tried in order; the first probe that says yes opens the path.
PROBES: list[tuple[Callable[[str], bool], Opener]] = [
    (os.path.isdir, _directory),
    (is_stream, _stream),
    (lambda p: not os.path.isdir(p), _tarball),
]


def split_transport(name: str) -> tuple[str | None, str, str | None]:
    """(transport prefix or None, path or reference, image ref or None) of what the user named.

    `oci-archive:PATH[:REF]` and `docker-archive:PATH[:REF]` take a trailing `:REF` only where PATH
    itself does not exist, so a file name holding a colon still works.
    """
    for prefix in TRANSPORTS:
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if prefix.endswith("://"):
                return prefix, rest, None
            if not os.path.exists(rest) and ":" in rest:
                path, _, ref = rest.rpartition(":")
                return prefix, path, ref or None
            return prefix, rest, None
    return None, name, None


def absolute(name: str) -> str:
    """`name` with its path made absolute, its transport prefix and ref kept (a daemon changes directory)."""
    prefix, rest, ref = split_transport(name)
    if prefix is None:
        return os.path.abspath(name)
    if prefix.endswith("://"):
        return name
    return prefix + os.path.abspath(rest) + (":" + ref if ref else "")


def local_path(name: str) -> str | None:
    """The file or directory on this machine that `name` names (its transport prefix and ref taken off),
    or None for a network reference."""
    prefix, rest, _ = split_transport(name)
    return None if prefix is not None and prefix.endswith("://") else rest


def is_reference(name: str) -> bool:
    """Whether `name` is a network reference (docker://...), which is no path to make absolute or stat."""
    return name.startswith("docker://")


def open_store(name: str, **options: object) -> BlobStore:
    """Open the store for `name`: a transport reference (docker://..., oci:DIR, ...) or a plain path.

    Options: cache (a tarindex Store or None), progress(done, total) for a first look at a big archive;
    for registries creds ("USER[:PASS]"), tls_verify, cert_dir, timeout (seconds).
    """
    prefix, rest, ref = split_transport(name)
    if prefix is not None:
        return TRANSPORTS[prefix](name, rest, ref, options)
    for probe, opener in PROBES:
        if probe(rest):
            return opener(name, rest, None, options)
    raise FormatError("is not an image archive")
