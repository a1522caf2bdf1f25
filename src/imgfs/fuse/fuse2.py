"""libfuse 2's low-level API over the shared handlers (bridge.py); fusepy finds and loads the library.

libfuse 2 negotiates at most 128 KiB a request and knows no READDIRPLUS: the kernel sends one LOOKUP per
entry that a walk meets. It stays for systems that only have libfuse 2.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import fuse  # fusepy: loads libfuse.so.2 on import (FUSE_LIBRARY_PATH, set by mounting.py)

from . import bridge
from .ops import ImgfsOps

VERSION = 2
_ino, _req, _FI = ctypes.c_ulong, ctypes.c_void_p, ctypes.POINTER(fuse.fuse_file_info)
_CB = ctypes.CFUNCTYPE


class _ConnInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint) for n in ("proto_major", "proto_minor", "async_read", "max_write",
                                             "max_readahead", "capable", "want", "max_background",
                                             "congestion_threshold")] + [("reserved", ctypes.c_uint * 23)]


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
WRITES = ("setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "write", "setxattr",
          "removexattr", "create")


class _LowLevelOps(ctypes.Structure):
    _fields_ = _OPS


_vp, _ptr = ctypes.c_void_p, ctypes.POINTER
_lib = bridge.load(fuse._libfuse._name, bridge.reply_prototypes(fuse.fuse_file_info) + [
    ("fuse_mount", _vp, [ctypes.c_char_p, _ptr(bridge.Args)]),
    ("fuse_unmount", None, [ctypes.c_char_p, _vp]),
    ("fuse_lowlevel_new", _vp, [_ptr(bridge.Args), _ptr(_LowLevelOps), ctypes.c_size_t, _vp]),
    ("fuse_session_add_chan", None, [_vp, _vp]),
    ("fuse_session_remove_chan", None, [_vp]),
    ("fuse_session_loop", ctypes.c_int, [_vp]),
    ("fuse_session_exit", None, [_vp]),
    ("fuse_session_destroy", None, [_vp]),
])


def describe() -> str:
    """What this backend is, for --version and --help."""
    return f"libfuse 2 ({os.path.basename(fuse._libfuse._name)}, through fusepy)"


class Bridge(bridge.Bridge):
    """Mounts `ops` on a mountpoint with libfuse 2 and serves it until unmounted (the constructor blocks)."""

    lib = _lib

    def __init__(self, ops: ImgfsOps, mountpoint: str, args: list[str], debug: bool = False) -> None:
        super().__init__(ops, mountpoint, debug)
        self.run(_LowLevelOps(), _OPS, WRITES, args)

    def init(self, userdata: Any, conn: Any) -> None:
        """The mount is up."""
        self.started(conn.contents.proto_minor)

    def serve(self, mountpoint: bytes, argv_list: list[bytes]) -> None:
        """Mount with this libfuse and run its loop until unmounted."""
        argv = (ctypes.c_char_p * (len(argv_list) + 1))(*argv_list, None)
        args = bridge.Args(len(argv_list), argv, 0)
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
                _lib.fuse_session_add_chan(se, chan)
                self.loop(mountpoint, lambda: _lib.fuse_session_loop(se), lambda: _lib.fuse_session_exit(se))
                _lib.fuse_session_remove_chan(chan)
            finally:
                _lib.fuse_session_destroy(se)
        finally:
            _lib.fuse_unmount(mountpoint, chan)
            _lib.fuse_opt_free_args(ctypes.byref(args))
