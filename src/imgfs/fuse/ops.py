"""The filesystem's answers over image trees: inode numbers in, stat tuples and bytes out, OSError(errno) on refusal.

Pure Python (no libfuse): bridge.py turns libfuse's low-level callbacks into these calls. An inode number
says where an entry is (inodes.py packs and unpacks them): a directory's names its tree node, anything
else's its member reference (hard links share one), so an inode alone finds a file's bytes or a directory's
children, and nothing is remembered per inode.

Never a wrong byte: a read gives all the bytes asked for (up to the end of the file) or EIO with a log
line, never a short count (the kernel would keep it as the file's size); an archive changed under the
mount (size, mtime or ctime) answers EIO.
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
from ..stores import local_path
from ..tarindex.reader import DIR, FILE, SYMLINK, normalize
from ..tarindex.source import SourceChanged
from ..tree import Tree
from ..tree.tree import S_IFMT as IFMT
from .inodes import MOUNT_ROOT
from .layout import DIR as SKEL_DIR
from .layout import FILE as SKEL_FILE
from .layout import TREE, Layout, Node

_TIME_LIMIT = float(1 << 62)  # seconds either side of the epoch that a timespec still holds
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

# (st_ino, st_mode, st_nlink, st_uid, st_gid, st_rdev, st_size, st_mtime)
Stat = tuple[int, int, int, int, int, int, int, float]


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class _Where:
    """Where a file's bytes are: an extent of the archive (fd, base, size), or a tree read, or bytes."""

    __slots__ = ("node", "tree", "ref", "data", "file", "fd", "base", "size")

    def __init__(self, node: Node, tree: Tree | None, ref: int) -> None:
        self.node, self.tree, self.ref, self.data = node, tree, ref, node.data
        ext = tree.extent(ref) if tree is not None else None
        if ext is None:
            self.file, self.fd, self.base = None, -1, 0
            self.size = len(node.data) if tree is None else tree.stat(ref)[5]
        else:
            self.file, self.base, self.size = ext
            self.fd = self.file.fd


class ImgfsOps:
    """Read-only operations on the mount, named after the FUSE operations they answer."""

    def __init__(self, layout: Layout, archive_path: str, log: logging.Logger | None = None,
                 owner: tuple[int | None, int | None, int | None] | None = None) -> None:
        self.layout = layout
        self.inodes = layout.inodes
        # -o uid=,gid=,umask= as libfuse 2's high-level API applies them: every entry shows that owner,
        # group, and the mode 0777 & ~umask (type bits kept); None: as stored.
        self.owner = owner if owner is not None and any(v is not None for v in owner) else None
        self.log = log or logging.getLogger("imgfs.fuse")
        self.archive_path = archive_path
        path = local_path(archive_path)
        if path is None:  # an image in a registry: no file to take the size and time of
            self.archive_size, self.mtime = 0, time.time()
        else:
            st = os.stat(path)
            self.archive_size, self.mtime = st.st_size, st.st_mtime
        self.uid, self.gid = os.getuid(), os.getgid()
        self.on_ready: list = []  # callables run once libfuse has mounted and called init
        # Files being read, by inode: a 1 GiB file is asked for in 1024 to 8192 reads.
        self._where: cachetools.LRUCache = cachetools.LRUCache(maxsize=256)
        self._where_lock = threading.Lock()  # reads that decompress run in other threads
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
        slot, is_dir, value = self.inodes.decode(ino)
        if slot == 0:
            node = self.layout.by_ino.get(value)
            if node is None:
                raise _err(errno.ENOENT)
            return node, None, 0
        if slot > len(self.layout.trees):
            raise _err(errno.ENOENT)
        node = self.layout.trees[slot - 1]
        tree = self._tree(node)
        if is_dir:
            if value >= len(tree.refs) or (value and tree.parents[value] < 0):
                raise _err(errno.ENOENT)
            return node, tree, tree.refs[value]
        if tree.member(value) is None:
            raise _err(errno.ENOENT)
        return node, tree, value

    def _dir_node(self, ino: int) -> int:
        """The tree node of a directory inode."""
        _, is_dir, value = self.inodes.decode(ino)
        if not is_dir:
            raise _err(errno.ENOTDIR)
        return value

    def _tree_ino(self, slot: int, node: int, ref: int, kind: int) -> int:
        """A tree entry's inode: a directory's says its node, anything else's its reference."""
        if kind == DIR:
            return self.inodes.directory(slot, node)
        return self.inodes.entry(slot, ref)

    def _label(self, node: Node, tree: Tree | None, ref: int) -> str:
        """An entry's path for a log line: its tree's mount path and its member name."""
        path = node.path
        found = tree.member(ref) if tree is not None else None
        if found is not None:
            path += b"/" + (normalize(found[0].names[found[1]]) or b"?")
        return path.decode("utf-8", "backslashreplace")

    def _tree_stat(self, node: Node, tree: Tree, ref: int) -> tuple[int, int, int, int, int, int, float]:
        """tree.stat(), or EIO (logged once) for facts that no stat can carry (a uid of 2^40, say)."""
        try:
            st = tree.stat(ref)
            _mode, nlink, uid, gid, rdev, size, mtime = st
            if (nlink | uid | gid | rdev) >> 32 or size >> 63 or not -_TIME_LIMIT < mtime < _TIME_LIMIT:  # one test
                raise ValueError("an owner, size, time or device number out of range")
        except (OverflowError, ValueError) as e:
            self._log_once(f"{self._label(node, tree, ref)}: cannot be shown: {e}")
            raise _err(errno.EIO) from None
        return st

    # -- metadata ---------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> int:
        """The inode of `name` in directory `parent`; ENOENT when there is none."""
        return self._child(parent, name)[0]

    def lookup_stat(self, parent: int, name: bytes) -> Stat:
        """getattr() of `name` in directory `parent` (its inode first), in one step: FUSE's LOOKUP."""
        ino, node, tree, cref = self._child(parent, name)
        if tree is None:
            return self.getattr(ino)
        return self._owned((ino,) + self._tree_stat(node, tree, cref))

    def _child(self, parent: int, name: bytes) -> tuple[int, Node, Tree | None, int]:
        """(inode, node, tree, ref) of a directory's child; tree is None for skeleton nodes."""
        node, tree, ref = self._resolve(parent)
        if tree is None:
            if node.kind != SKEL_DIR:
                raise _err(errno.ENOTDIR)
            child = self.layout.nodes.get((b"" if node.path == b"/" else node.path) + b"/" + name)
            if child is None:
                raise _err(errno.ENOENT)
            return child.ino, child, None, 0
        c = tree.child(self._dir_node(parent), name)
        if c is None:
            raise _err(errno.ENOENT)
        cref = tree.refs[c]
        return self._tree_ino(node.slot, c, cref, tree.kind_code(cref)), node, tree, cref

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
        st = self._tree_stat(node, tree, ref)
        if ino == node.ino and ref < 0:  # a layer with no '.' entry: date its directory by the layer
            st = st[:6] + (node.mtime if node.mtime is not None else self.mtime,)
        return (ino,) + st

    def readdir(self, ino: int) -> list[tuple[bytes, int, int]]:
        """(name, type bits, inode) of '.', '..' and every child, sorted by name."""
        return [e[:3] for e in self._listing(ino, False)]

    def readdir_plus(self, ino: int) -> list[tuple[bytes, int, int, Stat | None]]:
        """readdir() with each child's getattr() (None where it would cost a tree build or an error)."""
        return self._listing(ino, True)

    def _listing(self, ino: int, plus: bool) -> list[tuple[bytes, int, int, Stat | None]]:
        node, tree, ref = self._resolve(ino)
        out: list[tuple[bytes, int, int, Stat | None]] = [(b".", stat.S_IFDIR, ino, None),
                                                          (b"..", stat.S_IFDIR, ino, None)]
        if tree is None:
            if node.kind != SKEL_DIR:
                raise _err(errno.ENOTDIR)
            base = b"" if node.path == b"/" else node.path
            for name in node.names:
                child = self.layout.nodes[base + b"/" + name]
                # A tree's root is stat'ed only when asked for: it would build the tree (every layer's).
                st = self.getattr(child.ino) if plus and (child.kind != TREE or child.tree is not None) else None
                out.append((name, stat.S_IFREG if child.kind == SKEL_FILE else stat.S_IFDIR, child.ino, st))
            return out
        n = self._dir_node(ino)
        slot, inodes, refs, name = node.slot, self.inodes, tree.refs, tree.name
        # The kind arrays of the tree's layers, indexed as kind_code() does, without a call per child.
        owned, tree_stat, kind = self._owned, self._tree_stat, tree.kind_code
        for c in tree.kids(n):
            r = refs[c]
            k = kind(r)
            c_ino = inodes.directory(slot, c) if k == DIR else inodes.entry(slot, r)
            st: Stat | None = None
            if plus:
                try:
                    st = owned((c_ino,) + tree_stat(node, tree, r))
                except OSError:  # logged: the entry is listed, and its LOOKUP answers EIO
                    st = None
            out.append((name(c), IFMT.get(k, stat.S_IFREG), c_ino, st))
        return out

    def readlink(self, ino: int) -> bytes:
        """A symlink's target exactly as stored (absolute ones too)."""
        _, tree, ref = self._resolve(ino)
        if tree is None or tree.kind_code(ref) != SYMLINK:
            raise _err(errno.EINVAL)
        return tree.link_target(ref)

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
        ino = MOUNT_ROOT
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
        with self._where_lock:
            where = self._where.get(ino)
        if where is None:
            node, tree, ref = self._resolve(ino)
            k = tree.kind_code(ref) if tree is not None else (FILE if node.kind == SKEL_FILE else DIR)
            if k != FILE:
                raise _err(errno.EISDIR if k == DIR else errno.EINVAL)
            where = _Where(node, tree, ref)
            with self._where_lock:
                self._where[ino] = where
        return where

    def _check_archive(self, where: _Where) -> None:
        """EIO (logged once) when the file under the entry is no longer the one that was mounted.

        Checked around every read (one fstat), so that an archive rewritten in place, even with the same
        size, answers EIO rather than other bytes, whether the bytes are read here (an extent) or by the tree.
        """
        try:
            if where.file is not None:
                where.file.check()
            elif where.tree is not None:
                where.tree.check(where.ref)
        except SourceChanged as e:
            self._log_once(f"{self._label(where.node, where.tree, where.ref)}: the archive changed while mounted "
                           f"({e.why} differs): remount it")
            raise _err(errno.EIO) from None

    def _short(self, where: _Where, got: int, want: int) -> OSError:
        self._log_once(f"{self._label(where.node, where.tree, where.ref)}: the archive gave fewer bytes than"
                       " asked for (was it truncated?)")
        return _err(errno.EIO)

    def read(self, ino: int, size: int, offset: int) -> bytes:
        """Bytes of a file, all of them (to its end) or EIO, logged once, when the archive cannot serve them."""
        where = self._where_of(ino)
        if offset < 0:
            raise _err(errno.EINVAL)
        if where.tree is None:
            return where.data[offset:offset + size]
        want = max(0, min(size, where.size - offset))
        self._check_archive(where)
        try:
            data = where.tree.read(where.ref, offset, size)
        except (ImgfsError, OSError) as e:
            self._log_once(f"{self._label(where.node, where.tree, where.ref)}: {e}")
            raise _err(errno.EIO) from None
        if len(data) != want:
            raise self._short(where, len(data), want)
        self._check_archive(where)  # changed while it was read: these bytes may be the new file's
        return data

    def read_into(self, ino: int, size: int, offset: int, buf: memoryview) -> int | None:
        """Read a file's bytes that lie as they are in the archive into `buf` (len(buf) >= size) and return
        their count, all of them or EIO; None when they must be decompressed: use read() (it may be slow)."""
        where = self._where_of(ino)
        if offset < 0:
            raise _err(errno.EINVAL)
        if where.fd < 0:
            if where.tree is not None:
                return None
            data = where.data[offset:offset + size]
            buf[:len(data)] = data
            return len(data)
        want = max(0, min(size, where.size - offset))
        if not want:
            return 0
        self._check_archive(where)
        try:
            got = os.preadv(where.fd, [buf[:want]], where.base + offset)
        except OSError as e:
            self._log_once(f"{self._label(where.node, where.tree, where.ref)}: {e.strerror}")
            raise _err(errno.EIO) from None
        if got != want:
            self._check_archive(where)  # the better reason, if it is the one
            raise self._short(where, got, want)
        self._check_archive(where)  # changed while it was read: these bytes may be the new file's
        return got

    # -- lifecycle --------------------------------------------------------------------------
    def init(self) -> None:
        """libfuse has mounted: tell whoever waits."""
        for cb in self.on_ready:
            cb()

    def destroy(self) -> None:
        """Unmounted: forget the files being read (the archive itself is closed by mount())."""
        with self._where_lock:
            self._where.clear()
