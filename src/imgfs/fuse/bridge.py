"""libfuse 2 callbacks over ImgfsOps, registered and run here with fusepy's ctypes declarations.

fusepy's own FUSE class decodes every path as UTF-8 (tar names need not be), goes through a dict for
each stat, and copies every read through a Python bytes object. Here paths stay bytes, stat structures
are filled in place, and file content is handed to libfuse as (fd, offset) through `read_buf`, so the
bytes travel from the archive to the kernel without entering Python.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import fuse

from .ops import ImgfsOps

log = logging.getLogger("imgfs.fuse")

_FUSE_BUF_IS_FD = 1 << 1
_FUSE_BUF_FD_SEEK = 1 << 2


class _Buf(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


class _BufVec(ctypes.Structure):
    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                ("buf", _Buf * 1)]


_READ_BUF = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(_BufVec)),
                             ctypes.c_size_t, ctypes.c_int64, ctypes.POINTER(fuse.fuse_file_info))


class _Operations(ctypes.Structure):
    """libfuse 2.9's struct fuse_operations: fusepy's declaration, completed up to read_buf."""

    _fields_ = list(fuse.fuse_operations._fields_) + [
        ("poll", ctypes.c_void_p), ("write_buf", ctypes.c_void_p), ("read_buf", _READ_BUF),
        ("flock", ctypes.c_void_p), ("fallocate", ctypes.c_void_p)]


_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_BUFVEC_SIZE = ctypes.sizeof(_BufVec)
_PROTOTYPES = {f[0]: f[1] for f in _Operations._fields_}
_WRITES = ("mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "chmod", "chown", "truncate",
           "write", "create", "ftruncate", "utimens", "setxattr", "removexattr")


def _guard(name: str, func: Callable[..., int]) -> Callable[..., int]:
    """Turn OSError into -errno, and anything unexpected into a logged EIO, never an escape into C."""

    def callback(*args: Any) -> int:
        try:
            return func(*args)
        except OSError as e:
            return -(e.errno or errno.EIO)
        except Exception:  # a bug: say where, keep serving
            log.exception("FUSE %s failed", name)
            return -errno.EIO

    return callback


class Bridge:
    """Mounts `ops` on a mountpoint and serves it until unmounted (the constructor blocks)."""

    def __init__(self, ops: ImgfsOps, mountpoint: str, args: list[str]) -> None:
        self.operations = ops
        table = _Operations()
        # No opendir/releasedir: libfuse answers those itself, saving two Python calls a directory. No
        # flush: its first ENOSYS tells the kernel to stop sending one at every close().
        names = ("getattr", "fgetattr", "readlink", "open", "read_buf", "release", "readdir", "statfs", "access",
                 "getxattr", "listxattr", "init", "destroy") + _WRITES
        for name in names:
            impl = getattr(self, name) if name not in _WRITES else self._erofs
            setattr(table, name, _PROTOTYPES[name](_guard(name, impl)))
        argv_list = [b"imgfs"] + [os.fsencode(a) for a in args] + [os.fsencode(mountpoint)]
        argv = (ctypes.c_char_p * len(argv_list))(*argv_list)
        err = fuse._libfuse.fuse_main_real(len(argv_list), argv, ctypes.pointer(table),
                                           ctypes.sizeof(table), None)
        if err:
            raise RuntimeError(err)

    def getattr(self, path: bytes, buf: Any) -> int:
        """stat(): fill libfuse's struct stat in place."""
        ino, mode, nlink, uid, gid, rdev, size, mtime = self.operations.getattr(path)
        st = buf.contents
        st.st_ino = ino
        st.st_mode = mode
        st.st_nlink = nlink
        st.st_uid = uid
        st.st_gid = gid
        st.st_rdev = rdev
        st.st_size = size
        st.st_blocks = (size + 511) >> 9
        sec = math.floor(mtime)  # floor, not int(): a negative time still needs 0 <= tv_nsec < 1e9
        ts = fuse.c_timespec(sec, int((mtime - sec) * 1e9))
        st.st_mtimespec = ts
        st.st_atimespec = ts
        st.st_ctimespec = ts
        return 0

    def fgetattr(self, path: bytes, buf: Any, fip: Any) -> int:
        """fstat() of an open file: the same as stat() of its path."""
        return self.getattr(path, buf)

    def readdir(self, path: bytes, buf: Any, filler: Any, offset: int, fip: Any) -> int:
        """Every entry with its type and inode (so find and ls need no stat per entry)."""
        st = fuse.c_stat()  # libfuse copies it, so one serves every entry
        for name, mode, ino in self.operations.readdir(path):
            st.st_mode = mode
            st.st_ino = ino
            if filler(buf, name, st, 0):
                break
        return 0

    def readlink(self, path: bytes, buf: Any, bufsize: int) -> int:
        """The target as stored, NUL-terminated and cut to the buffer."""
        target = self.operations.readlink(path)[:bufsize - 1] + b"\0"
        ctypes.memmove(buf, target, len(target))
        return 0

    def open(self, path: bytes, fip: Any) -> int:
        """Open for reading; the handle goes in fi->fh."""
        fi = fip.contents
        fi.fh = self.operations.open(path, fi.flags)
        return 0

    def read_buf(self, path: bytes | None, bufp: Any, size: int, offset: int, fip: Any) -> int:
        """Hand libfuse a buffer vector: (fd, position) for it to read, or bytes in malloc'd memory."""
        where = self.operations.locate_read(fip.contents.fh, size, offset)
        vec_addr = _libc.malloc(_BUFVEC_SIZE)  # libfuse frees the vector (and any memory buffer in it)
        if not vec_addr:
            return -errno.ENOMEM
        vec = _BufVec.from_address(vec_addr)
        vec.count, vec.idx, vec.off = 1, 0, 0
        b = vec.buf[0]
        if isinstance(where, tuple):
            b.fd, b.pos, b.size = where
            b.flags = _FUSE_BUF_IS_FD | _FUSE_BUF_FD_SEEK
            b.mem = None
        else:
            b.fd, b.pos, b.size, b.flags = -1, 0, len(where), 0
            b.mem = _libc.malloc(len(where) or 1)
            if not b.mem:
                return -errno.ENOMEM
            ctypes.memmove(b.mem, where, len(where))
        bufp[0] = ctypes.cast(vec_addr, ctypes.POINTER(_BufVec))
        return 0

    def release(self, path: bytes | None, fip: Any) -> int:
        """Close a handle."""
        return self.operations.release(fip.contents.fh)

    def statfs(self, path: bytes, buf: Any) -> int:
        """statvfs() fields."""
        stv = buf.contents
        for key, val in self.operations.statfs(path).items():
            setattr(stv, key, val)
        return 0

    def access(self, path: bytes, amode: int) -> int:
        """access(): read yes, write EROFS."""
        return self.operations.access(path, amode)

    def getxattr(self, path: bytes, name: bytes, value: Any, size: int, *args: Any) -> int:
        """One extended attribute, or its size when the caller passes no buffer."""
        data = self.operations.getxattr(path, name)
        if not value:  # a size query
            return len(data)
        if len(data) > size:
            return -errno.ERANGE
        ctypes.memmove(value, data, len(data))
        return len(data)

    def listxattr(self, path: bytes, namebuf: Any, size: int) -> int:
        """The NUL-separated attribute names, or their size when the caller passes no buffer."""
        data = b"".join(n + b"\0" for n in self.operations.listxattr(path))
        if not namebuf:
            return len(data)
        if len(data) > size:
            return -errno.ERANGE
        ctypes.memmove(namebuf, data, len(data))
        return len(data)

    def init(self, conn: Any) -> None:
        """The mount is up."""
        self.operations.init()

    def destroy(self, private_data: Any) -> None:
        """The mount is gone."""
        self.operations.destroy()

    def _erofs(self, *args: Any) -> int:
        """Any write."""
        return -errno.EROFS
