"""Copy tree entries into a directory without ever creating, changing or following anything outside it.

Every path is opened one component at a time, relative to the directory file descriptor of its parent,
with O_NOFOLLOW: a symlink in the destination (made by this extraction or already there) is never
written through. Names with '/', '..', '.' or NUL components are refused. Directory modes and mtimes
are applied last, deepest first, so read-only directories can still be filled.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable

from .errors import ImgfsError
from .tree import Entry, Tree

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_PATH = getattr(os, "O_PATH", 0)
_SPECIAL = {"fifo": stat.S_IFIFO, "char": stat.S_IFCHR, "block": stat.S_IFBLK}
_ID_LIMIT = 0xFFFFFFFF  # owner ids are 32 bits, and chown takes this one as "leave unchanged"
_CHUNK = 1 << 20


class ExtractStats:
    """What an extraction wrote, and the entries it could not write (one message each)."""

    def __init__(self) -> None:
        self.files = self.bytes = self.dirs = self.symlinks = self.hardlinks = self.special = self.skipped = 0
        self.errors: list[str] = []

    def summary(self) -> str:
        """A one-line account, e.g. '3 files (120 bytes), 1 directory, 1 symlink'."""
        def n(count: int, word: str, plural: str = "") -> str:
            return f"{count} {word if count == 1 else plural or word + 's'}"
        parts = [n(self.files, "file") + f" ({self.bytes} bytes)", n(self.dirs, "directory", "directories"),
                 n(self.symlinks, "symlink"), n(self.hardlinks, "hard link")]
        if self.special:
            parts.append(n(self.special, "special file"))
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        return ", ".join(parts)


class UnsafeName(ImgfsError):
    """A path component that could climb out of the destination."""


def safe_parts(key: bytes) -> list[bytes]:
    """Split a tree key into components, refusing any that is empty, '.', '..' or holds NUL."""
    if key == b"":
        return []
    parts = key.split(b"/")
    for p in parts:
        if p in (b"", b".", b"..") or b"\0" in p:
            raise UnsafeName(f"refusing unsafe path {key!r}")
    return parts


def _is_dir_in_the_way(e: OSError) -> bool:
    return e.errno in (errno.ELOOP, errno.ENOTDIR)


def _open_dir(parent_fd: int, name: bytes, create: bool) -> int:
    """Open directory `name` under `parent_fd`, never through a symlink; replace a non-directory."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        if not (create and _is_dir_in_the_way(e)):
            raise
        os.unlink(name, dir_fd=parent_fd)  # a file or symlink where a directory belongs: replace it
    os.mkdir(name, 0o755, dir_fd=parent_fd)
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def _open_path(root_fd: int, parts: list[bytes]) -> int:
    """A new descriptor for the existing directory root/parts (no symlink followed)."""
    fd = os.dup(root_fd)
    for name in parts:
        try:
            nxt = _open_dir(fd, name, create=False)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def _clear(parent_fd: int, name: bytes) -> None:
    """Remove a non-directory at `name` so it can be created afresh; a directory there is an error."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory is in the way", name)
    os.unlink(name, dir_fd=parent_fd)


class _Dirs:
    """Open directory descriptors along the current path, created on the way when missing."""

    def __init__(self, root_fd: int) -> None:
        self.root = root_fd
        self.stack: list[tuple[bytes, int]] = []

    def get(self, parts: list[bytes]) -> int:
        """The descriptor of root/parts, creating missing directories (mode 0755)."""
        n = 0
        while n < len(self.stack) and n < len(parts) and self.stack[n][0] == parts[n]:
            n += 1
        self.close(n)
        for name in parts[n:]:
            parent = self.stack[-1][1] if self.stack else self.root
            self.stack.append((name, _open_dir(parent, name, create=True)))
        return self.stack[-1][1] if self.stack else self.root

    def close(self, keep: int = 0) -> None:
        """Close every descriptor past the first `keep`."""
        for _, fd in self.stack[keep:]:
            os.close(fd)
        del self.stack[keep:]


def _ns(e: Entry) -> tuple[int, int]:
    t = int(e.mtime * 1_000_000_000)
    return t, t


class _Extractor:
    def __init__(self, tree: Tree, root_fd: int, preserve_owner: bool, warn: Callable[[str], None]) -> None:
        self.tree = tree
        self.root = root_fd
        self.dirs = _Dirs(root_fd)
        self.owner = preserve_owner
        self.warn = warn
        self.stats = ExtractStats()
        self.first_copy: dict[int, list[bytes]] = {}  # ino -> where its first copy was written
        self.finish: list[tuple[list[bytes], Entry]] = []
        self.xattr_warned = False

    def run(self, keys: Iterable[bytes]) -> ExtractStats:
        for top in keys:
            try:
                safe_parts(top)  # Tree.walk would normalise '..' away and walk somewhere else
            except UnsafeName as err:
                self.stats.errors.append(str(err))
                continue
            skip: bytes | None = None
            for key, ref in self.tree.walk(top):
                if skip is not None and key.startswith(skip):
                    continue
                e = self.tree.entry_for(key, ref)
                try:
                    self.one(safe_parts(key), e)
                # OverflowError, ValueError: a number or name no system call takes; that entry only is skipped
                except (OSError, ImgfsError, OverflowError, ValueError) as err:
                    self.stats.errors.append(f"{e.display_path}: {_reason(err)}")
                    if e.kind == "dir":
                        skip = key + b"/"
        self.dirs.close()
        for parts, e in reversed(self.finish):  # deepest first, so parents get their mtime last
            try:
                fd = _open_path(self.root, parts)
                try:
                    self.meta(fd, e)
                finally:
                    os.close(fd)
            except OSError as err:
                self.stats.errors.append(f"{e.display_path}: {_reason(err)}")
        return self.stats

    def one(self, parts: list[bytes], e: Entry) -> None:
        if self.owner and not (0 <= e.uid < _ID_LIMIT and 0 <= e.gid < _ID_LIMIT):
            raise ImgfsError(f"owner {e.uid}:{e.gid} is not a valid id here; not extracted")
        if e.kind == "dir":
            self.dirs.get(parts)
            if parts:  # the root of the tree maps to the destination itself, which keeps its metadata
                self.finish.append((parts, e))
                self.stats.dirs += 1
            return
        parent = self.dirs.get(parts[:-1])
        name = parts[-1]
        _clear(parent, name)
        if e.kind == "file":
            self.file(parent, name, parts, e)
        elif e.kind == "symlink":
            os.symlink(e.linkname or b"", name, dir_fd=parent)
            if self.owner:
                os.chown(name, e.uid, e.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(name, ns=_ns(e), dir_fd=parent, follow_symlinks=False)
            self.stats.symlinks += 1
        else:
            self.special(parent, name, e)

    def file(self, parent: int, name: bytes, parts: list[bytes], e: Entry) -> None:
        if e.nlink > 1:
            first = self.first_copy.get(e.ino)
            if first is not None and self.link(first, parent, name):
                return
            self.first_copy.setdefault(e.ino, parts)
        fd = os.open(name, _NEW_FILE, 0o600, dir_fd=parent)
        try:
            extents = self.tree.data_extents(e.ref)
            if extents is None:
                with open(fd, "wb", closefd=False) as out:
                    for chunk in self.tree.read_all(e.ref):
                        out.write(chunk)
            else:
                self.sparse(fd, e, extents)
            self.meta(fd, e)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=parent)  # no half-written file is left behind
            raise
        os.close(fd)
        self.stats.files += 1
        self.stats.bytes += e.size

    def sparse(self, fd: int, e: Entry, extents: list[tuple[int, int]]) -> None:
        """Write only a sparse file's data; the holes stay holes where the file system has them."""
        for off, length in extents:
            end = off + length
            while off < end:
                chunk = self.tree.read(e.ref, off, min(_CHUNK, end - off))
                if not chunk:
                    raise ImgfsError(f"{e.display_path}: its data ends early")
                view = memoryview(chunk)
                while view:  # pwrite may write less than asked
                    n = os.pwrite(fd, view, off)
                    view, off = view[n:], off + n
        os.ftruncate(fd, e.size)

    def link(self, first: list[bytes], parent: int, name: bytes) -> bool:
        """Hard-link `name` to the first copy of its group; False (write a copy) if that fails."""
        try:
            src_dir = _open_path(self.root, first[:-1])
        except OSError:
            return False
        try:
            os.link(first[-1], name, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False)
        except OSError as err:
            self.warn(f"hard link {name!r}: {_reason(err)}; writing a copy")
            return False
        finally:
            os.close(src_dir)
        self.stats.hardlinks += 1
        return True

    def special(self, parent: int, name: bytes, e: Entry) -> None:
        kind = _SPECIAL[e.kind]
        if kind == stat.S_IFIFO:
            os.mkfifo(name, 0o600, dir_fd=parent)
        elif self.owner and e.device is not None:
            os.mknod(name, 0o600 | kind, os.makedev(*e.device), dir_fd=parent)
        else:
            self.warn(f"{e.display_path}: device node not extracted (needs root)")
            self.stats.skipped += 1
            return
        # An O_PATH descriptor pins the node just made; /proc/self/fd lets chmod reach it without a path lookup.
        fd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if stat.S_IFMT(os.fstat(fd).st_mode) != kind:
                raise OSError(errno.EEXIST, "replaced while extracting", name)
            proc = f"/proc/self/fd/{fd}"
            if self.owner:
                os.chown(proc, e.uid, e.gid)
            os.chmod(proc, e.mode)
            os.utime(proc, ns=_ns(e))
        finally:
            os.close(fd)
        self.stats.special += 1

    def meta(self, fd: int, e: Entry) -> None:
        """Owner, mode, xattrs and mtime of an open file or directory (chown first: it clears setuid)."""
        if self.owner:
            os.fchown(fd, e.uid, e.gid)
        os.fchmod(fd, e.mode)
        for k, v in self.tree.xattrs(e.ref).items():
            try:
                os.setxattr(fd, k, v)
            except OSError as err:
                if not self.xattr_warned:
                    self.warn(f"extended attributes not kept ({k} on {e.display_path}: {_reason(err)})")
                    self.xattr_warned = True
        os.utime(fd, ns=_ns(e))


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    return str(err)


def _outermost(keys: Iterable[bytes]) -> list[bytes]:
    """Keys with those inside another key dropped, so nothing is written twice."""
    out: list[bytes] = []
    for k in sorted(set(keys)):
        if not any(k == o or o == b"" or k.startswith(o + b"/") for o in out):
            out.append(k)
    return out


def extract(tree: Tree, keys: Iterable[bytes], dest: str | os.PathLike[str], *,
            preserve_owner: bool | None = None, warn: Callable[[str], None] | None = None) -> ExtractStats:
    """Copy the entries at `keys` (and below) to dest/<key>; per-entry failures are listed in the stats."""
    os.makedirs(dest, exist_ok=True)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    owner = os.geteuid() == 0 if preserve_owner is None else preserve_owner
    try:
        return _Extractor(tree, root_fd, owner, warn or (lambda _m: None)).run(_outermost(keys))
    finally:
        os.close(root_fd)
