"""libfuse 2's low-level API over ImgfsOps, declared and run here with ctypes (fusepy loads the library).

Low level, because the kernel then asks by inode, not by path, and because one answer becomes possible
that the high-level API never gives: ENOSYS to OPEN and OPENDIR. On Linux >= 5.1 (protocol 7.29) the
kernel then opens files and directories without asking, keeps their pages, and caches each directory's
listing (FOPEN_CACHE_DIR): a second `find` sends no request at all. File content goes to libfuse as
(fd, offset), so bytes travel from the archive to the kernel without entering Python.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import logging
import math
import os
import struct
from collections.abc import Callable
from typing import Any

import cachetools

import fuse

from .ops import ImgfsOps, Stat

log = logging.getLogger("imgfs.fuse")

TIMEOUT = 86400.0  # the content never changes while mounted, so the kernel may keep every answer a day
_NO_OPEN_MINOR = 29  # FUSE protocol 7.29 (Linux 5.1): ENOSYS from OPENDIR/OPEN means "no need to ask"
_FUSE_BUF_IS_FD = 1 << 1
_FUSE_BUF_FD_SEEK = 1 << 2

_ino, _req, _FI = ctypes.c_ulong, ctypes.c_void_p, ctypes.POINTER(fuse.fuse_file_info)
_CB = ctypes.CFUNCTYPE


class _Buf(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


class _BufVec(ctypes.Structure):
    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                ("buf", _Buf * 1)]


# fusepy's struct stat stops at the last field it names; the C one has reserved words after it, and a
# struct that embeds it (fuse_entry_param) must place what follows where C does.
_STAT_SIZE = {"x86_64": 144, "aarch64": 128}.get(os.uname().machine, ctypes.sizeof(fuse.c_stat))


class _EntryParam(ctypes.Structure):
    _fields_ = [("ino", _ino), ("generation", ctypes.c_ulong), ("attr", fuse.c_stat),
                ("_reserved", ctypes.c_char * max(0, _STAT_SIZE - ctypes.sizeof(fuse.c_stat))),
                ("attr_timeout", ctypes.c_double), ("entry_timeout", ctypes.c_double)]


class _ConnInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint) for n in ("proto_major", "proto_minor", "async_read", "max_write",
                                             "max_readahead", "capable", "want", "max_background",
                                             "congestion_threshold")] + [("reserved", ctypes.c_uint * 23)]


class _Args(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)), ("allocated", ctypes.c_int)]


_c = ctypes
_OPS: list[tuple[str, Any]] = [  # libfuse 2.9's struct fuse_lowlevel_ops, in order; c_void_p: left NULL
    ("init", _CB(None, _c.c_void_p, _c.POINTER(_ConnInfo))), ("destroy", _CB(None, _c.c_void_p)),
    ("lookup", _CB(None, _req, _ino, _c.c_char_p)), ("forget", _c.c_void_p),
    ("getattr", _CB(None, _req, _ino, _FI)), ("setattr", _CB(None, _req, _ino, _c.c_void_p, _c.c_int, _FI)),
    ("readlink", _CB(None, _req, _ino)), ("mknod", _CB(None, _req, _ino, _c.c_char_p, _c.c_uint, _c.c_ulong)),
    ("mkdir", _CB(None, _req, _ino, _c.c_char_p, _c.c_uint)), ("unlink", _CB(None, _req, _ino, _c.c_char_p)),
    ("rmdir", _CB(None, _req, _ino, _c.c_char_p)), ("symlink", _CB(None, _req, _c.c_char_p, _ino, _c.c_char_p)),
    ("rename", _CB(None, _req, _ino, _c.c_char_p, _ino, _c.c_char_p)),
    ("link", _CB(None, _req, _ino, _ino, _c.c_char_p)), ("open", _CB(None, _req, _ino, _FI)),
    ("read", _CB(None, _req, _ino, _c.c_size_t, _c.c_int64, _FI)),
    ("write", _CB(None, _req, _ino, _c.c_void_p, _c.c_size_t, _c.c_int64, _FI)),
    ("flush", _c.c_void_p), ("release", _c.c_void_p), ("fsync", _c.c_void_p),
    ("opendir", _CB(None, _req, _ino, _FI)), ("readdir", _CB(None, _req, _ino, _c.c_size_t, _c.c_int64, _FI)),
    ("releasedir", _c.c_void_p), ("fsyncdir", _c.c_void_p), ("statfs", _CB(None, _req, _ino)),
    ("setxattr", _CB(None, _req, _ino, _c.c_char_p, _c.c_void_p, _c.c_size_t, _c.c_int)),
    ("getxattr", _CB(None, _req, _ino, _c.c_char_p, _c.c_size_t)),
    ("listxattr", _CB(None, _req, _ino, _c.c_size_t)), ("removexattr", _CB(None, _req, _ino, _c.c_char_p)),
    ("access", _CB(None, _req, _ino, _c.c_int)), ("create", _CB(None, _req, _ino, _c.c_char_p, _c.c_uint, _FI)),
] + [(name, _c.c_void_p) for name in ("getlk", "setlk", "bmap", "ioctl", "poll", "write_buf", "retrieve_reply",
                                       "forget_multi", "flock", "fallocate")]
_WRITES = ("setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "write", "setxattr",
           "removexattr", "create")


class _LowLevelOps(ctypes.Structure):
    _fields_ = _OPS


def _library() -> ctypes.CDLL:
    """libfuse with the prototypes used here, on a handle of its own (fusepy's keeps its prototypes)."""
    lib = ctypes.CDLL(fuse._libfuse._name)
    vp, ptr = ctypes.c_void_p, ctypes.POINTER
    for name, restype, argtypes in [
        ("fuse_reply_err", ctypes.c_int, [vp, ctypes.c_int]),
        ("fuse_reply_entry", ctypes.c_int, [vp, ptr(_EntryParam)]),
        ("fuse_reply_attr", ctypes.c_int, [vp, ptr(fuse.c_stat), ctypes.c_double]),
        ("fuse_reply_readlink", ctypes.c_int, [vp, ctypes.c_char_p]),
        ("fuse_reply_open", ctypes.c_int, [vp, _FI]),
        ("fuse_reply_buf", ctypes.c_int, [vp, ctypes.c_char_p, ctypes.c_size_t]),
        ("fuse_reply_data", ctypes.c_int, [vp, ptr(_BufVec), ctypes.c_int]),
        ("fuse_reply_statfs", ctypes.c_int, [vp, ptr(fuse.c_statvfs)]),
        ("fuse_reply_xattr", ctypes.c_int, [vp, ctypes.c_size_t]),
        ("fuse_mount", vp, [ctypes.c_char_p, ptr(_Args)]),
        ("fuse_unmount", None, [ctypes.c_char_p, vp]),
        ("fuse_lowlevel_new", vp, [ptr(_Args), ptr(_LowLevelOps), ctypes.c_size_t, vp]),
        ("fuse_set_signal_handlers", ctypes.c_int, [vp]),
        ("fuse_remove_signal_handlers", None, [vp]),
        ("fuse_session_add_chan", None, [vp, vp]),
        ("fuse_session_remove_chan", None, [vp]),
        ("fuse_session_loop", ctypes.c_int, [vp]),
        ("fuse_session_destroy", None, [vp]),
        ("fuse_opt_free_args", None, [ptr(_Args)]),
    ]:
        func = getattr(lib, name)
        func.restype, func.argtypes = restype, argtypes
    return lib


_lib = _library()
_DIRENT = struct.Struct("=QQII")  # struct fuse_dirent: ino, offset of the next entry, name length, type


_PADS = tuple(bytes(n) for n in range(8))


def pack_dir(entries: list[tuple[bytes, int, int]]) -> tuple[bytes, list[int]]:
    """A listing as the kernel takes it (what fuse_add_direntry writes), and where each entry starts."""
    parts: list[bytes] = []
    ends, pos = [0], 0
    add, pack, head = parts.append, _DIRENT.pack, _DIRENT.size
    for n, (name, mode, ino) in enumerate(entries, 1):
        length = len(name)
        pad = -(head + length) & 7
        add(pack(ino, n, length, mode >> 12))
        add(name)
        add(_PADS[pad])
        pos += head + length + pad
        ends.append(pos)
    return b"".join(parts), ends


def dir_slice(listing: tuple[bytes, list[int]], offset: int, size: int) -> bytes:
    """The whole entries of a packed listing from entry number `offset` that fit in `size` bytes."""
    data, ends = listing
    start = ends[offset if 0 <= offset < len(ends) else -1]  # past the end (or nonsense): nothing more
    return data[start:ends[bisect.bisect_right(ends, start + size) - 1]]


def _fill(st: Any, s: Stat) -> None:
    """Fill a struct stat in place from a Stat tuple."""
    st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, st.st_size, mtime = s
    st.st_blocks = (st.st_size + 511) >> 9
    sec = math.floor(mtime)  # floor, not int(): a negative time still needs 0 <= tv_nsec < 1e9
    ts = fuse.c_timespec(sec, int((mtime - sec) * 1e9))
    st.st_mtimespec = st.st_atimespec = st.st_ctimespec = ts


def _guard(name: str, func: Callable[..., None]) -> Callable[..., None]:
    """Answer a request whose handler raised: OSError as its errno, anything unexpected as a logged EIO.

    Every handler replies as its very last step, so a raise means no reply has been sent yet.
    """

    def callback(req: int, *args: Any) -> None:
        try:
            func(req, *args)
        except OSError as e:
            _lib.fuse_reply_err(req, e.errno or errno.EIO)
        except Exception:  # a bug: say where, keep serving
            log.exception("FUSE %s failed", name)
            _lib.fuse_reply_err(req, errno.EIO)

    return callback


class Bridge:
    """Mounts `ops` on a mountpoint and serves it until unmounted (the constructor blocks)."""

    def __init__(self, ops: ImgfsOps, mountpoint: str, args: list[str]) -> None:
        self.operations = ops
        self.no_open = False  # set in init() when the kernel understands ENOSYS from OPEN/OPENDIR
        self._entry = _EntryParam(generation=1, attr_timeout=TIMEOUT, entry_timeout=TIMEOUT)
        self._stat = fuse.c_stat()
        self._vec = _BufVec(count=1)
        # Packed listings of the directories being read: a big one is read in several requests.
        self._listings: cachetools.LRUCache = cachetools.LRUCache(maxsize=16)
        table = _LowLevelOps()
        prototypes = dict(_OPS)
        for name, _ in _OPS:
            if name in _WRITES:
                setattr(table, name, prototypes[name](_guard(name, self._erofs)))
            elif name in ("init", "destroy"):
                setattr(table, name, prototypes[name](self._lifecycle(getattr(self, name))))
            elif prototypes[name] is not ctypes.c_void_p:
                setattr(table, name, prototypes[name](_guard(name, getattr(self, name))))
        self._table = table  # the callbacks must outlive the session
        self._serve(os.fsencode(mountpoint), [b"imgfs"] + [os.fsencode(a) for a in args])

    def _serve(self, mountpoint: bytes, argv_list: list[bytes]) -> None:
        argv = (ctypes.c_char_p * (len(argv_list) + 1))(*argv_list, None)
        args = _Args(len(argv_list), argv, 0)
        chan = _lib.fuse_mount(mountpoint, ctypes.byref(args))
        if not chan:
            _lib.fuse_opt_free_args(ctypes.byref(args))
            raise RuntimeError("fuse_mount failed")
        try:
            se = _lib.fuse_lowlevel_new(ctypes.byref(args), ctypes.byref(self._table),
                                        ctypes.sizeof(self._table), None)
            if not se:
                raise RuntimeError("fuse_lowlevel_new failed")
            try:
                if _lib.fuse_set_signal_handlers(se) == -1:
                    raise RuntimeError("fuse_set_signal_handlers failed")
                _lib.fuse_session_add_chan(se, chan)
                _lib.fuse_session_loop(se)
                _lib.fuse_remove_signal_handlers(se)
                _lib.fuse_session_remove_chan(chan)
            finally:
                _lib.fuse_session_destroy(se)
        finally:
            _lib.fuse_unmount(mountpoint, chan)
            _lib.fuse_opt_free_args(ctypes.byref(args))

    # -- lifecycle ----------------------------------------------------------------------------
    @staticmethod
    def _lifecycle(func: Callable[..., None]) -> Callable[..., None]:
        def callback(*args: Any) -> None:
            try:
                func(*args)
            except Exception:
                log.exception("FUSE %s failed", func.__name__)

        return callback

    def init(self, userdata: Any, conn: Any) -> None:
        """The mount is up: learn what the kernel understands."""
        self.no_open = conn.contents.proto_minor >= _NO_OPEN_MINOR
        self.operations.init()

    def destroy(self, userdata: Any) -> None:
        """The mount is gone."""
        self.operations.destroy()

    # -- requests: each replies exactly once, as its last step ----------------------------------
    def lookup(self, req: int, parent: int, name: bytes) -> None:
        """An entry with its attributes; a missing name is a negative entry the kernel may keep."""
        e = self._entry
        try:
            st = self.operations.lookup_stat(parent, name)
        except FileNotFoundError:
            e.ino = 0
        else:
            e.ino = st[0]
            _fill(e.attr, st)
        _lib.fuse_reply_entry(req, ctypes.byref(e))

    def getattr(self, req: int, ino: int, fip: Any) -> None:
        """stat()."""
        _fill(self._stat, self.operations.getattr(ino))
        _lib.fuse_reply_attr(req, ctypes.byref(self._stat), TIMEOUT)

    def readlink(self, req: int, ino: int) -> None:
        """The target as stored."""
        _lib.fuse_reply_readlink(req, self.operations.readlink(ino).split(b"\0", 1)[0])

    def open(self, req: int, ino: int, fip: Any) -> None:
        """ENOSYS where the kernel takes it as "open without asking"; else check and keep the pages."""
        if self.no_open:
            raise OSError(errno.ENOSYS, "open without asking")
        fi = fip.contents
        self.operations.open(ino, fi.flags)
        fi.keep_cache = 1
        _lib.fuse_reply_open(req, fip)

    def read(self, req: int, ino: int, size: int, offset: int, fip: Any) -> None:
        """Hand libfuse (fd, position) to read itself, or the bytes."""
        where = self.operations.locate_read(ino, size, offset)
        if isinstance(where, tuple):
            vec = self._vec
            vec.idx = vec.off = 0
            b = vec.buf[0]
            b.fd, b.pos, b.size = where
            b.flags = _FUSE_BUF_IS_FD | _FUSE_BUF_FD_SEEK
            _lib.fuse_reply_data(req, ctypes.byref(vec), 0)
        else:
            _lib.fuse_reply_buf(req, where, len(where))

    def opendir(self, req: int, ino: int, fip: Any) -> None:
        """ENOSYS where the kernel then caches listings itself; else an empty handle."""
        if self.no_open:
            raise OSError(errno.ENOSYS, "open without asking")
        _lib.fuse_reply_open(req, fip)

    def readdir(self, req: int, ino: int, size: int, offset: int, fip: Any) -> None:
        """As many whole entries from `offset` (an entry number) as fit in `size` bytes."""
        hit = self._listings.get(ino) if offset else None
        if hit is None:
            hit = self._listings[ino] = pack_dir(self.operations.readdir(ino))
        data = dir_slice(hit, offset, size)
        _lib.fuse_reply_buf(req, data, len(data))

    def statfs(self, req: int, ino: int) -> None:
        """statvfs() fields."""
        stv = fuse.c_statvfs()
        for key, val in self.operations.statfs().items():
            setattr(stv, key, val)
        _lib.fuse_reply_statfs(req, ctypes.byref(stv))

    def access(self, req: int, ino: int, mask: int) -> None:
        """access(): read yes, write EROFS."""
        self.operations.access(ino, mask)
        _lib.fuse_reply_err(req, 0)

    def getxattr(self, req: int, ino: int, name: bytes, size: int) -> None:
        """One extended attribute, or its size when the caller passes no buffer."""
        self._reply_sized(req, self.operations.getxattr(ino, name), size)

    def listxattr(self, req: int, ino: int, size: int) -> None:
        """The NUL-separated attribute names, or their size when the caller passes no buffer."""
        self._reply_sized(req, b"".join(n + b"\0" for n in self.operations.listxattr(ino)), size)

    @staticmethod
    def _reply_sized(req: int, data: bytes, size: int) -> None:
        if not size:
            _lib.fuse_reply_xattr(req, len(data))
        elif len(data) > size:
            _lib.fuse_reply_err(req, errno.ERANGE)
        else:
            _lib.fuse_reply_buf(req, data, len(data))

    def _erofs(self, req: int, *args: Any) -> None:
        """Any write."""
        _lib.fuse_reply_err(req, errno.EROFS)
