"""The filesystem's answers over image trees: bytes paths in, stat tuples and bytes out, OSError(errno) on refusal.

Pure Python (no libfuse): bridge.py turns libfuse's callbacks into these calls.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading

import cachetools

from ..errors import ImgfsError
from ..tarindex.reader import BLOCKDEV, CHAR, DIR, FIFO, FILE, SYMLINK
from ..tree import Tree
from ..tree.tree import MASK, SHIFT
from .layout import DIR as SKEL_DIR
from .layout import FILE as SKEL_FILE
from .layout import TREE_SHIFT, Layout, Node

IFMT = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, CHAR: stat.S_IFCHR,
        BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}
_IMPLIED = 1 << (TREE_SHIFT - 1)  # local inode numbers of implied directories start here
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

# (st_ino, st_mode, st_nlink, st_uid, st_gid, st_rdev, st_size, st_mtime)
Stat = tuple[int, int, int, int, int, int, int, float]


def local_ino(key: bytes, ref: int) -> int:
    """A tree entry's inode inside its tree: hard links share their ref, hence their inode."""
    if not key:
        return 1
    return ref + 2 if ref >= 0 else _IMPLIED - ref


class _Handle:
    """An open file: where its bytes are, and its path for the one log line a failure gets."""

    __slots__ = ("tree", "ref", "path", "data", "fd", "base", "size")

    def __init__(self, tree: Tree | None, ref: int, path: bytes, data: bytes = b"") -> None:
        self.tree, self.ref, self.path, self.data = tree, ref, path, data
        ext = tree.extent(ref) if tree is not None else None
        self.fd, self.base, self.size = ext or (-1, 0, len(data))


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class ImgfsOps:
    """Read-only operations on the mount, named after the FUSE operations they answer."""

    def __init__(self, layout: Layout, archive_path: str, log: logging.Logger | None = None) -> None:
        self.layout = layout
        self.log = log or logging.getLogger("imgfs.fuse")
        st = os.stat(archive_path)
        self.archive_path = archive_path
        self.archive_size = st.st_size
        self.mtime = st.st_mtime
        self.uid, self.gid = os.getuid(), os.getgid()
        self.on_ready: list = []  # callables run once libfuse has mounted and called init
        self._handles: dict[int, _Handle] = {}
        self._fh = itertools.count(1)
        # Messages already logged, so a broken file logs one line however often it is read:
        # at most 1024 short strings (well under 1 MiB).
        self._logged: cachetools.LRUCache = cachetools.LRUCache(maxsize=1024)
        self._log_lock = threading.Lock()

    # -- helpers ----------------------------------------------------------------------------
    def _log_once(self, message: str) -> None:
        with self._log_lock:
            if message in self._logged:
                return
            self._logged[message] = True
        self.log.error("%s", message)

    def _locate(self, path: bytes) -> tuple[Node, bytes]:
        hit = self.layout.locate(path)
        if hit is None:
            raise _err(errno.ENOENT)
        return hit

    def _tree(self, node: Node, path: bytes) -> Tree:
        try:
            return node.get_tree()
        except (ImgfsError, OSError) as e:
            self._log_once(f"{path.decode('utf-8', 'backslashreplace')}: {e}")
            raise _err(errno.EIO) from None

    def _entry(self, path: bytes) -> tuple[Node, Tree | None, bytes, int]:
        """(node, tree, key, ref) for a path; tree is None for skeleton nodes."""
        node, key = self._locate(path)
        if node.load is None:
            return node, None, key, 0
        tree = self._tree(node, path)
        ref = tree.nodes.get(key)
        if ref is None:
            raise _err(errno.ENOENT)
        return node, tree, key, ref

    # -- metadata ---------------------------------------------------------------------------
    def getattr(self, path: bytes) -> Stat:
        """stat() of a path: the entry's own mode, owner, size, mtime, nlink and a stable inode."""
        node, tree, key, ref = self._entry(path)
        if tree is None:
            if node.kind == SKEL_FILE:
                return node.ino, stat.S_IFREG | 0o444, 1, self.uid, self.gid, 0, len(node.data), self.mtime
            return node.ino, stat.S_IFDIR | 0o555, 2, self.uid, self.gid, 0, 0, self.mtime
        st = tree.stat(ref)
        if not key and ref < 0:  # a layer with no '.' entry: date its directory by the layer's creation
            st = st[:6] + (node.mtime if node.mtime is not None else self.mtime,)
        return (node.ino - 1 | local_ino(key, ref),) + st

    def readdir(self, path: bytes) -> list[tuple[bytes, int, int]]:
        """(name, type bits, inode) of '.', '..' and every child, sorted by name."""
        node, tree, key, ref = self._entry(path)
        if tree is None:
            if node.kind != SKEL_DIR:
                raise _err(errno.ENOTDIR)
            out = [(b".", stat.S_IFDIR, node.ino), (b"..", stat.S_IFDIR, node.ino)]
            base = b"" if path == b"/" else path
            for name in node.names:
                child = self.layout.nodes[base + b"/" + name]
                out.append((name, stat.S_IFREG if child.kind == SKEL_FILE else stat.S_IFDIR, child.ino))
            return out
        if tree.kind_code(ref) != DIR:
            raise _err(errno.ENOTDIR)
        base_ino = node.ino - 1
        me = base_ino | local_ino(key, ref)
        out = [(b".", stat.S_IFDIR, me), (b"..", stat.S_IFDIR, me)]
        nodes = tree.nodes
        # The kind arrays of the tree's layers, indexed as kind_code() does, without a call per child.
        kinds = [idx.kinds if idx is not None else b"" for idx in tree.indexes]
        cut = len(key) + 1 if key else 0
        for child in tree.child_paths(key):
            r = nodes[child]
            if r >= 0:
                out.append((child[cut:], IFMT.get(kinds[r >> SHIFT][r & MASK], stat.S_IFREG), base_ino | r + 2))
            else:
                out.append((child[cut:], stat.S_IFDIR, base_ino | _IMPLIED - r))
        return out

    def readlink(self, path: bytes) -> bytes:
        """A symlink's target exactly as stored (absolute ones too)."""
        _, tree, key, ref = self._entry(path)
        if tree is None or tree.kind_code(ref) != SYMLINK:
            raise _err(errno.EINVAL)
        return tree.entry_for(key, ref).linkname or b""

    def listxattr(self, path: bytes) -> list[bytes]:
        """Names of the entry's extended attributes (from PAX records)."""
        _, tree, _, ref = self._entry(path)
        if tree is None:
            return []
        return [os.fsencode(n) for n in tree.xattrs(ref)]

    def getxattr(self, path: bytes, name: bytes) -> bytes:
        """One extended attribute's value; ENODATA when the entry has no such attribute."""
        _, tree, _, ref = self._entry(path)
        value = tree.xattrs(ref).get(os.fsdecode(name)) if tree is not None else None
        if value is None:
            raise _err(errno.ENODATA)
        return value

    def access(self, path: bytes, mode: int) -> int:
        """Everything that exists may be read by the mounting user; nothing may be written."""
        self._entry(path)
        if mode & os.W_OK:
            raise _err(errno.EROFS)
        return 0

    def statfs(self, path: bytes) -> dict[str, int]:
        """Sizes as statvfs fields: the archive's size, nothing free."""
        files = len(self.layout.nodes) + sum(len(n.tree) for n in self.layout.nodes.values() if n.tree is not None)
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": (self.archive_size + 4095) // 4096,
                "f_bfree": 0, "f_bavail": 0, "f_files": files, "f_ffree": 0, "f_favail": 0,
                "f_namemax": 255}

    # -- content ----------------------------------------------------------------------------
    def open(self, path: bytes, flags: int) -> int:
        """A handle for reading a regular file; EROFS for any write intent."""
        if flags & _WRITE_FLAGS:
            raise _err(errno.EROFS)
        node, tree, _, ref = self._entry(path)
        if tree is None:
            if node.kind != SKEL_FILE:
                raise _err(errno.EISDIR)
            handle = _Handle(None, 0, path, node.data)
        else:
            k = tree.kind_code(ref)
            if k == DIR:
                raise _err(errno.EISDIR)
            if k != FILE:  # devices and fifos are the kernel's business; nothing is behind them here
                raise _err(errno.ENXIO)
            handle = _Handle(tree, ref, path)
        fh = next(self._fh)
        self._handles[fh] = handle
        return fh

    def read(self, fh: int, size: int, offset: int) -> bytes:
        """Bytes of an open file; EIO (logged once) when the archive cannot serve them."""
        h = self._handles[fh]
        if offset < 0:
            raise _err(errno.EINVAL)
        if h.tree is None:
            return h.data[offset:offset + size]
        try:
            return h.tree.read(h.ref, offset, size)
        except (ImgfsError, OSError) as e:
            self._log_once(f"{h.path.decode('utf-8', 'backslashreplace')}: {e}")
            raise _err(errno.EIO) from None

    def locate_read(self, fh: int, size: int, offset: int) -> tuple[int, int, int] | bytes:
        """Where a read's bytes are: (fd, position, count) for libfuse to read itself, else the bytes."""
        h = self._handles[fh]
        if offset < 0:
            raise _err(errno.EINVAL)
        if h.fd < 0:
            return self.read(fh, size, offset)
        want = max(0, min(size, h.size - offset))
        end = h.base + offset + want
        try:
            if want and os.fstat(h.fd).st_size < end:
                raise _err(errno.EIO)  # libfuse would send the short read as if it were the whole file
        except OSError as e:
            self._log_once(f"{h.path.decode('utf-8', 'backslashreplace')}: the archive changed: "
                           + ("it is now shorter than this file's data" if e.errno == errno.EIO else e.strerror))
            raise _err(errno.EIO) from None
        return h.fd, h.base + offset, want

    def release(self, fh: int) -> int:
        """Forget a handle."""
        self._handles.pop(fh, None)
        return 0

    # -- lifecycle --------------------------------------------------------------------------
    def init(self, path: object = None) -> None:
        """libfuse has mounted: tell whoever waits."""
        for cb in self.on_ready:
            cb()

    def destroy(self, path: object = None) -> None:
        """Unmounted: nothing is left to release here (the archive is closed by mount())."""
        self._handles.clear()

    # -- every write is refused (the bridge answers EROFS itself; these are for direct callers) --
    def _erofs(self, *args: object) -> int:
        raise _err(errno.EROFS)

    chmod = chown = create = link = mkdir = mknod = rename = rmdir = symlink = truncate = _erofs
    unlink = utimens = write = setxattr = removexattr = _erofs
