"""The filesystem's answers over image trees: inode numbers in, stat tuples and bytes out, OSError(errno) on refusal.

Pure Python (no libfuse): bridge.py turns libfuse's low-level callbacks into these calls. An inode number
says where an entry is: tree slot << 48 | inode inside the tree (slot 0: the skeleton, whose root is 1).
Inside a tree a directory's is 2^47 + its tree node, anything else's its reference + 2 (hard links share
one): an inode alone finds a file's bytes or a directory's children, and nothing is remembered per inode.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time

import cachetools

from ..errors import ImgfsError
from ..stores import is_reference
from ..tarindex.reader import BLOCKDEV, CHAR, DIR, FIFO, FILE, SYMLINK, normalize
from ..tree import Tree
from ..tree.tree import MASK, SHIFT
from .layout import DIR as SKEL_DIR
from .layout import FILE as SKEL_FILE
from .layout import TREE_SHIFT, Layout, Node

IFMT = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, CHAR: stat.S_IFCHR,
        BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}
ROOT_INO = 1
_LOCAL = (1 << TREE_SHIFT) - 1
_DIRS = 1 << (TREE_SHIFT - 1)  # a directory's local inode is this + its tree node (references stay below)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

# (st_ino, st_mode, st_nlink, st_uid, st_gid, st_rdev, st_size, st_mtime)
Stat = tuple[int, int, int, int, int, int, int, float]


def local_ino(tree: Tree, node: int) -> int:
    """A tree entry's inode in its tree (its root is 1): a directory's says its node, anything else's its
    reference, so that hard links share one and a file's inode alone finds its bytes."""
    ref = tree.refs[node]
    return _DIRS + node if tree.kind_code(ref) == DIR else ref + 2


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class _Where:
    """Where a file's bytes are: an extent of the archive (fd, base, size), or a tree read, or bytes."""

    __slots__ = ("node", "tree", "ref", "data", "fd", "base", "size")

    def __init__(self, node: Node, tree: Tree | None, ref: int) -> None:
        self.node, self.tree, self.ref, self.data = node, tree, ref, node.data
        ext = tree.extent(ref) if tree is not None else None
        self.fd, self.base, self.size = ext or (-1, 0, len(node.data))


class ImgfsOps:
    """Read-only operations on the mount, named after the FUSE operations they answer."""

    def __init__(self, layout: Layout, archive_path: str, log: logging.Logger | None = None,
                 owner: tuple[int | None, int | None, int | None] | None = None) -> None:
        self.layout = layout
        # -o uid=,gid=,umask= as libfuse 2's high-level API applies them: every entry shows that owner,
        # group, and the mode 0777 & ~umask (type bits kept); None: as stored.
        self.owner = owner if owner is not None and any(v is not None for v in owner) else None
        self.log = log or logging.getLogger("imgfs.fuse")
        self.archive_path = archive_path
        if is_reference(archive_path):  # an image in a registry: no file to take the size and time of
            self.archive_size, self.mtime = 0, time.time()
        else:
            st = os.stat(archive_path)
            self.archive_size, self.mtime = st.st_size, st.st_mtime
        self.uid, self.gid = os.getuid(), os.getgid()
        self.on_ready: list = []  # callables run once libfuse has mounted and called init
        # Files being read, by inode: a read is 128 KiB at most, so a 1 GiB file asks 8192 times.
        self._where: cachetools.LRUCache = cachetools.LRUCache(maxsize=256)
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

    def _tree(self, node: Node) -> Tree:
        try:
            return node.get_tree()
        except (ImgfsError, OSError) as e:
            self._log_once(f"{node.path.decode('utf-8', 'backslashreplace')}: {e}")
            raise _err(errno.EIO) from None

    def _resolve(self, ino: int) -> tuple[Node, Tree | None, int]:
        """(node, tree, ref) of an inode; tree is None for skeleton nodes."""
        slot = ino >> TREE_SHIFT
        if slot == 0:
            node = self.layout.by_ino.get(ino)
            if node is None:
                raise _err(errno.ENOENT)
            return node, None, 0
        if slot > len(self.layout.trees):
            raise _err(errno.ENOENT)
        node = self.layout.trees[slot - 1]
        tree = self._tree(node)
        local = ino & _LOCAL
        if local == 1:
            return node, tree, tree.refs[0]
        if local >= _DIRS:
            n = local - _DIRS
            if n >= len(tree.refs) or tree.parents[n] < 0:
                raise _err(errno.ENOENT)
            return node, tree, tree.refs[n]
        ref = local - 2
        idx = tree.indexes[ref >> SHIFT] if ref >> SHIFT < len(tree.indexes) else None
        if idx is None or (ref & MASK) >= len(idx.kinds):
            raise _err(errno.ENOENT)
        return node, tree, ref

    @staticmethod
    def _dir_node(ino: int) -> int:
        """The tree node of a directory inode."""
        local = ino & _LOCAL
        if local == 1:
            return 0
        if local < _DIRS:
            raise _err(errno.ENOTDIR)
        return local - _DIRS

    def _label(self, where: _Where) -> str:
        """A file's path for a log line: its tree's mount path and its member name."""
        path = where.node.path
        if where.tree is not None and where.ref >= 0:
            idx = where.tree.indexes[where.ref >> SHIFT]
            if idx is not None:
                path += b"/" + (normalize(idx.names[where.ref & MASK]) or b"?")
        return path.decode("utf-8", "backslashreplace")

    # -- metadata ---------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> int:
        """The inode of `name` in directory `parent`; ENOENT when there is none."""
        return self._child(parent, name)[0]

    def lookup_stat(self, parent: int, name: bytes) -> Stat:
        """getattr() of `name` in directory `parent` (its inode first), in one step: FUSE's LOOKUP."""
        ino, tree, cref = self._child(parent, name)
        return self.getattr(ino) if tree is None else self._owned((ino,) + tree.stat(cref))

    def _child(self, parent: int, name: bytes) -> tuple[int, Tree | None, int]:
        """(inode, tree, ref) of a directory's child; tree is None for skeleton nodes (trees not built)."""
        node, tree, ref = self._resolve(parent)
        if tree is None:
            if node.kind != SKEL_DIR:
                raise _err(errno.ENOTDIR)
            child = self.layout.nodes.get((b"" if node.path == b"/" else node.path) + b"/" + name)
            if child is None:
                raise _err(errno.ENOENT)
            return child.ino, None, 0
        c = tree.child(self._dir_node(parent), name)
        if c is None:
            raise _err(errno.ENOENT)
        return (parent & ~_LOCAL) | local_ino(tree, c), tree, tree.refs[c]

    def getattr(self, ino: int) -> Stat:
        """stat() of an inode: the entry's own mode, owner, size, mtime, nlink and its inode number."""
        return self._owned(self._getattr(ino))

    def _owned(self, st: Stat) -> Stat:
        """A Stat with the -o uid=,gid=,umask= overrides applied, if any."""
        if self.owner is None:
            return st
        uid, gid, umask = self.owner
        return (st[0], st[1] & 0o170000 | 0o777 & ~umask if umask is not None else st[1], st[2],
                st[3] if uid is None else uid, st[4] if gid is None else gid) + st[5:]

    def _getattr(self, ino: int) -> Stat:
        node, tree, ref = self._resolve(ino)
        if tree is None:
            if node.kind == SKEL_FILE:
                return ino, stat.S_IFREG | 0o444, 1, self.uid, self.gid, 0, len(node.data), self.mtime
            return ino, stat.S_IFDIR | 0o555, 2, self.uid, self.gid, 0, 0, self.mtime
        st = tree.stat(ref)
        if ino & _LOCAL == 1 and ref < 0:  # a layer with no '.' entry: date its directory by the layer
            st = st[:6] + (node.mtime if node.mtime is not None else self.mtime,)
        return (ino,) + st

    def readdir(self, ino: int) -> list[tuple[bytes, int, int]]:
        """(name, type bits, inode) of '.', '..' and every child, sorted by name."""
        node, tree, ref = self._resolve(ino)
        out = [(b".", stat.S_IFDIR, ino), (b"..", stat.S_IFDIR, ino)]
        if tree is None:
            if node.kind != SKEL_DIR:
                raise _err(errno.ENOTDIR)
            base = b"" if node.path == b"/" else node.path
            for name in node.names:
                child = self.layout.nodes[base + b"/" + name]
                out.append((name, stat.S_IFREG if child.kind == SKEL_FILE else stat.S_IFDIR, child.ino))
            return out
        n = self._dir_node(ino)
        base_ino = ino & ~_LOCAL
        refs, name = tree.refs, tree.name
        # The kind arrays of the tree's layers, indexed as kind_code() does, without a call per child.
        kinds = [idx.kinds if idx is not None else b"" for idx in tree.indexes]
        for c in tree.kids(n):
            r = refs[c]
            k = kinds[r >> SHIFT][r & MASK] if r >= 0 else DIR
            if k == DIR:
                out.append((name(c), stat.S_IFDIR, base_ino | _DIRS + c))
            else:
                out.append((name(c), IFMT.get(k, stat.S_IFREG), base_ino | r + 2))
        return out

    def readlink(self, ino: int) -> bytes:
        """A symlink's target exactly as stored (absolute ones too)."""
        _, tree, ref = self._resolve(ino)
        if tree is None or tree.kind_code(ref) != SYMLINK:
            raise _err(errno.EINVAL)
        idx = tree.indexes[ref >> SHIFT]
        return idx.links.get(ref & MASK, b"") if idx is not None else b""

    def listxattr(self, ino: int) -> list[bytes]:
        """Names of the entry's extended attributes (from PAX records)."""
        _, tree, ref = self._resolve(ino)
        if tree is None:
            return []
        return [os.fsencode(n) for n in tree.xattrs(ref)]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """One extended attribute's value; ENODATA when the entry has no such attribute."""
        _, tree, ref = self._resolve(ino)
        value = tree.xattrs(ref).get(os.fsdecode(name)) if tree is not None else None
        if value is None:
            raise _err(errno.ENODATA)
        return value

    def access(self, ino: int, mode: int) -> int:
        """Everything that exists may be read by the mounting user; nothing may be written."""
        self._resolve(ino)
        if mode & os.W_OK:
            raise _err(errno.EROFS)
        return 0

    def statfs(self) -> dict[str, int]:
        """Sizes as statvfs fields: the archive's size, nothing free."""
        files = len(self.layout.nodes) + sum(len(n.tree) for n in self.layout.trees if n.tree is not None)
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": (self.archive_size + 4095) // 4096,
                "f_bfree": 0, "f_bavail": 0, "f_files": files, "f_ffree": 0, "f_favail": 0,
                "f_namemax": 255}

    def lookup_path(self, path: bytes) -> int:
        """The inode of a path from the mount root, by one lookup per component (for callers outside FUSE)."""
        ino = ROOT_INO
        for name in path.split(b"/"):
            if name:
                ino = self.lookup(ino, name)
        return ino

    # -- content ----------------------------------------------------------------------------
    def open(self, ino: int, flags: int) -> None:
        """Check that an inode may be opened for reading: EROFS for any write intent."""
        if flags & _WRITE_FLAGS:
            raise _err(errno.EROFS)
        node, tree, ref = self._resolve(ino)
        if tree is None:
            if node.kind != SKEL_FILE:
                raise _err(errno.EISDIR)
            return
        k = tree.kind_code(ref)
        if k == DIR:
            raise _err(errno.EISDIR)
        if k != FILE:  # devices and fifos are the kernel's business; nothing is behind them here
            raise _err(errno.ENXIO)

    def _where_of(self, ino: int) -> _Where:
        where = self._where.get(ino)
        if where is None:
            node, tree, ref = self._resolve(ino)
            k = tree.kind_code(ref) if tree is not None else (FILE if node.kind == SKEL_FILE else DIR)
            if k != FILE:
                raise _err(errno.EISDIR if k == DIR else errno.EINVAL)
            where = self._where[ino] = _Where(node, tree, ref)
        return where

    def read(self, ino: int, size: int, offset: int) -> bytes:
        """Bytes of a file; EIO (logged once) when the archive cannot serve them."""
        where = self._where_of(ino)
        if offset < 0:
            raise _err(errno.EINVAL)
        if where.tree is None:
            return where.data[offset:offset + size]
        try:
            return where.tree.read(where.ref, offset, size)
        except (ImgfsError, OSError) as e:
            self._log_once(f"{self._label(where)}: {e}")
            raise _err(errno.EIO) from None

    def locate_read(self, ino: int, size: int, offset: int) -> tuple[int, int, int] | bytes:
        """Where a read's bytes are: (fd, position, count) for libfuse to read itself, else the bytes."""
        where = self._where_of(ino)
        if offset < 0:
            raise _err(errno.EINVAL)
        if where.fd < 0:
            return self.read(ino, size, offset)
        want = max(0, min(size, where.size - offset))
        end = where.base + offset + want
        try:
            if want and os.fstat(where.fd).st_size < end:
                raise _err(errno.EIO)  # libfuse would send the short read as if it were the whole file
        except OSError as e:
            self._log_once(f"{self._label(where)}: the archive changed: "
                           + ("it is now shorter than this file's data" if e.errno == errno.EIO else e.strerror))
            raise _err(errno.EIO) from None
        return where.fd, where.base + offset, want

    # -- lifecycle --------------------------------------------------------------------------
    def init(self) -> None:
        """libfuse has mounted: tell whoever waits."""
        for cb in self.on_ready:
            cb()

    def destroy(self) -> None:
        """Unmounted: nothing is left to release here (the archive is closed by mount())."""
        self._where.clear()
