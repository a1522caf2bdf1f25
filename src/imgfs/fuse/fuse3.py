"""libfuse 3's low-level API over the shared handlers (bridge.py), declared here with ctypes.

What libfuse 3 adds over 2: READDIRPLUS (a listing carries its entries' attributes, so a walk sends no
LOOKUP per entry), requests of up to 1 MiB (max_pages), and symlink targets cached by the kernel
(FUSE_CACHE_SYMLINKS). Opens stay zero-round-trip (NO_OPEN_SUPPORT, NO_OPENDIR_SUPPORT).
"""

from __future__ import annotations

import ctypes
from typing import Any

from . import bridge
from .ops import ImgfsOps

VERSION = 3
SONAME = "libfuse3.so.3"
MAX_READ = 1 << 20  # what max_pages allows (256 pages): 1 MiB a request

_CAP_ASYNC_READ = 1 << 0
_CAP_READDIRPLUS = 1 << 13
_CAP_READDIRPLUS_AUTO = 1 << 14
_CAP_NO_OPEN_SUPPORT = 1 << 17
_CAP_CACHE_SYMLINKS = 1 << 23
_CAP_NO_OPENDIR_SUPPORT = 1 << 24


class _FileInfo(ctypes.Structure):
    """struct fuse_file_info of libfuse 3."""

    _fields_ = [("flags", ctypes.c_int)] + [
        (name, ctypes.c_uint, 1) for name in ("writepage", "direct_io", "keep_cache", "flush", "nonseekable",
                                              "flock_release", "cache_readdir", "noflush")
    ] + [("padding", ctypes.c_uint, 24), ("padding2", ctypes.c_uint, 32), ("fh", ctypes.c_uint64),
         ("lock_owner", ctypes.c_uint64), ("poll_events", ctypes.c_uint32)]


class _ConnInfo(ctypes.Structure):
    """struct fuse_conn_info of libfuse 3."""

    _fields_ = [(n, ctypes.c_uint) for n in ("proto_major", "proto_minor", "max_write", "max_read", "max_readahead",
                                             "capable", "want", "max_background", "congestion_threshold",
                                             "time_gran")] + [("reserved", ctypes.c_uint * 22)]


_c, _CB = ctypes, ctypes.CFUNCTYPE
_ino, _req, _FI = ctypes.c_uint64, ctypes.c_void_p, ctypes.POINTER(_FileInfo)
# The write operations are declared with the request only: each answers EROFS without looking at the rest,
# and a C caller passing more arguments than the callee reads is fine on the supported ABIs (x86-64, AArch64).
_WRITE = _CB(None, _req)
_OPS: list[tuple[str, Any]] = [  # libfuse 3's struct fuse_lowlevel_ops, in order; c_void_p: left NULL
    ("init", _CB(None, _c.c_void_p, _c.POINTER(_ConnInfo))), ("destroy", _CB(None, _c.c_void_p)),
    ("lookup", _CB(None, _req, _ino, _c.c_char_p)), ("forget", _c.c_void_p),
    ("getattr", _CB(None, _req, _ino, _FI)), ("setattr", _WRITE),
    ("readlink", _CB(None, _req, _ino)), ("mknod", _WRITE), ("mkdir", _WRITE), ("unlink", _WRITE),
    ("rmdir", _WRITE), ("symlink", _WRITE), ("rename", _WRITE), ("link", _WRITE),
    ("open", _CB(None, _req, _ino, _FI)), ("read", _CB(None, _req, _ino, _c.c_size_t, _c.c_int64, _FI)),
    ("write", _WRITE), ("flush", _c.c_void_p), ("release", _c.c_void_p), ("fsync", _c.c_void_p),
    ("opendir", _CB(None, _req, _ino, _FI)), ("readdir", _CB(None, _req, _ino, _c.c_size_t, _c.c_int64, _FI)),
    ("releasedir", _c.c_void_p), ("fsyncdir", _c.c_void_p), ("statfs", _CB(None, _req, _ino)),
    ("setxattr", _WRITE), ("getxattr", _CB(None, _req, _ino, _c.c_char_p, _c.c_size_t)),
    ("listxattr", _CB(None, _req, _ino, _c.c_size_t)), ("removexattr", _WRITE),
    ("access", _CB(None, _req, _ino, _c.c_int)), ("create", _WRITE),
] + [(name, _c.c_void_p) for name in ("getlk", "setlk", "bmap", "ioctl", "poll", "write_buf", "retrieve_reply",
                                       "forget_multi", "flock", "fallocate")] + [
    ("readdirplus", _CB(None, _req, _ino, _c.c_size_t, _c.c_int64, _FI)),
    ("copy_file_range", _c.c_void_p), ("lseek", _c.c_void_p),
]


_WRITES = tuple(name for name, proto in _OPS if proto is _WRITE and name != "destroy")  # same C type


class _LowLevelOps(ctypes.Structure):
    _fields_ = _OPS


_vp, _ptr = ctypes.c_void_p, ctypes.POINTER
_lib = bridge.load(SONAME, bridge.reply_prototypes(_FileInfo) + [
    ("fuse_session_new", _vp, [_ptr(bridge.Args), _ptr(_LowLevelOps), ctypes.c_size_t, _vp]),
    ("fuse_session_mount", ctypes.c_int, [_vp, ctypes.c_char_p]),
    ("fuse_session_loop", ctypes.c_int, [_vp]),
    ("fuse_session_exit", None, [_vp]),
    ("fuse_session_unmount", None, [_vp]),
    ("fuse_session_destroy", None, [_vp]),
    ("fuse_pkgversion", ctypes.c_char_p, []),
])


def describe() -> str:
    """What this backend is, for --version and --help."""
    return f"libfuse {_lib.fuse_pkgversion().decode()} ({SONAME}, READDIRPLUS, 1 MiB reads)"


class Bridge(bridge.Bridge):
    """Mounts `ops` on a mountpoint with libfuse 3 and serves it until unmounted (the constructor blocks)."""

    lib = _lib
    max_read = MAX_READ

    def __init__(self, ops: ImgfsOps, mountpoint: str, args: list[str], debug: bool = False) -> None:
        super().__init__(ops, mountpoint, debug)
        self.run(_LowLevelOps(), _OPS, _WRITES, args)

    def init(self, userdata: Any, conn: Any) -> None:
        """The mount is up: ask for what libfuse 3 can do, as far as the kernel can."""
        c = conn.contents
        wanted = (_CAP_READDIRPLUS | _CAP_CACHE_SYMLINKS | _CAP_NO_OPEN_SUPPORT | _CAP_NO_OPENDIR_SUPPORT
                  | _CAP_ASYNC_READ)
        # Not READDIRPLUS_AUTO: the kernel would then send plain READDIRs after the first request of a
        # listing, and one LOOKUP per entry of those.
        c.want = (c.want | (wanted & c.capable)) & ~_CAP_READDIRPLUS_AUTO
        self.started(c.proto_minor)

    def readdirplus(self, req: int, ino: int, size: int, offset: int, fip: Any) -> None:
        """readdir() with each entry's attributes: the kernel needs no LOOKUP for them."""
        self._reply_listing(req, ino, size, offset, True)

    def serve(self, mountpoint: bytes, argv_list: list[bytes]) -> None:
        """Mount with this libfuse and run its loop until unmounted."""
        argv = (ctypes.c_char_p * (len(argv_list) + 1))(*argv_list, None)
        args = bridge.Args(len(argv_list), argv, 0)
        try:
            se = _lib.fuse_session_new(ctypes.byref(args), ctypes.byref(self._table), ctypes.sizeof(self._table),
                                       None)
            if not se:
                raise RuntimeError("fuse_session_new failed")
            try:
                if _lib.fuse_session_mount(se, mountpoint) != 0:
                    raise RuntimeError("fuse_session_mount failed")
                try:
                    self.loop(mountpoint, lambda: _lib.fuse_session_loop(se), lambda: _lib.fuse_session_exit(se))
                finally:
                    _lib.fuse_session_unmount(se)
            finally:
                _lib.fuse_session_destroy(se)
        finally:
            _lib.fuse_opt_free_args(ctypes.byref(args))
