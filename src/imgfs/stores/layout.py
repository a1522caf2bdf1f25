"""A directory holding images as files: an OCI image layout (`oci-layout`, `index.json`, `blobs/`), an
unpacked `docker save` (either version) or podman docker-archive, or skopeo's `dir:` layout.

Blobs are read in place with `pread` on each blob file. Every path is opened one component at a time,
relative to its parent's descriptor and with O_NOFOLLOW, so nothing outside the directory is ever
opened: a symlink inside it (legacy `docker save` links duplicate layers so) is followed by reading it
and resolving its target against the directory itself; one that climbs out, or is absolute, leads
nowhere.
"""

from __future__ import annotations

import errno
import os
import stat
import threading

from ..errors import FormatError
from ..tarindex import FileSource
from ..tarindex.reader import normalize
from .base import MAX_JSON
from .tarball import MAX_LINK_HOPS

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not hang us


class DirectoryStore:
    """Files of one directory by their path below it, symlinks followed only inside it."""

    kind_suffix = ""
    damage: str | None = None

    def __init__(self, path: str, *, ref: str | None = None) -> None:
        self.name = path
        self.ref = ref
        self.root = os.path.abspath(path)
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise FormatError(f"{path}: cannot open: {e.strerror}") from None
        self._lock = threading.Lock()
        self._files: dict[str, FileSource | None] = {}  # by the path asked for; None: not there

    def _walk(self, key: bytes) -> tuple[int, bytes] | bytes | None:
        """(open descriptor, resolved path) of the regular file at `key`; a new key where a symlink
        sends the walk (resolved inside the directory); None when there is nothing to read."""
        parts = key.split(b"/")
        fd = os.dup(self.fd)
        try:
            for n, name in enumerate(parts):
                last = n == len(parts) - 1
                try:
                    nxt = os.open(name, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        return None
                    try:
                        target = os.readlink(name, dir_fd=fd)
                    except OSError:
                        return None  # not a symlink: a file where a directory was expected
                    if target.startswith(b"/"):
                        return None  # absolute: it names the host's file system, never ours
                    head = b"/".join(parts[:n])
                    joined = (head + b"/" if head else b"") + target + b"".join(b"/" + p for p in parts[n + 1:])
                    return normalize(joined) or None
                os.close(fd)
                fd = nxt
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            fd, found = -1, fd
            return found, key
        finally:
            if fd >= 0:
                os.close(fd)

    def _file(self, path: str) -> FileSource | None:
        with self._lock:
            if path in self._files:
                return self._files[path]
        key = normalize(path.encode("utf-8", "surrogateescape"))
        hit: FileSource | None = None
        for _ in range(MAX_LINK_HOPS):
            if not key:
                break
            step = self._walk(key)
            if isinstance(step, tuple):
                fd, resolved = step
                hit = FileSource(os.path.join(self.root, os.fsdecode(resolved)), fd=fd)
                break
            key = step
        with self._lock:
            if path in self._files:  # another thread got there first: keep one descriptor
                if hit is not None:
                    hit.close()
                return self._files[path]
            self._files[path] = hit
            return hit

    def exists(self, path: str) -> bool:
        """Whether a regular file is at `path` (after following symlinks inside the directory)."""
        return self._file(path) is not None

    def open(self, path: str) -> FileSource:
        """The file's bytes, read in place."""
        f = self._file(path)
        if f is None:
            raise FormatError(f"{path} is missing from the directory")
        return f

    def read(self, path: str) -> bytes:
        """A small file whole; refused by its size before it is read."""
        f = self.open(path)
        if f.size > MAX_JSON:
            raise FormatError(f"{path} is {f.size} bytes, larger than any manifest or config ({MAX_JSON})")
        return f.pread(0, f.size)

    def origin(self, path: str) -> str:
        """The blob file itself: its path, device, inode, size, modification and change times."""
        f = self.open(path)
        return f"file:{f.path}:" + ":".join(map(str, f.identity))

    def close(self) -> None:
        """Close every file opened, and the directory."""
        with self._lock:
            for f in self._files.values():
                if f is not None:
                    f.close()
            self._files.clear()
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
