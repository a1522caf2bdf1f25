"""The libfuse-independent half of the mount: C structs both libfuse versions share, listings as the kernel
takes them, the guard around every callback, and the request handlers over ImgfsOps.

fuse2.py and fuse3.py each add their library, their own structs, their operation table and their session
loop (mounting.py picks one). Low level, because the kernel then asks by inode, not by path, and because
one answer becomes possible that the high-level API never gives: ENOSYS to OPEN and OPENDIR. On Linux >= 5.1
(protocol 7.29) the kernel then opens files and directories without asking, keeps their pages, and caches
each directory's listing (FOPEN_CACHE_DIR): a second `find` sends no request at all.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import logging
import math
import os
import signal
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cachetools

from .ops import ImgfsOps, Stat

log = logging.getLogger("imgfs.fuse")

TIMEOUT = 86400.0  # the content never changes while mounted, so the kernel may keep every answer a day
READ_THREADS = 4  # reads that decompress run here, so that they never hold up the loop's lookups
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_KERNEL_READAHEAD = 128 * 1024
STOP_GRACE = 0.8  # seconds a request still being served may delay the end of the process after a signal


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_long)]


_MACHINE = os.uname().machine
if _MACHINE == "aarch64":  # the generic layout of asm-generic/stat.h
    _STAT_HEAD = [("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64), ("st_mode", ctypes.c_uint32),
                  ("st_nlink", ctypes.c_uint32), ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
                  ("st_rdev", ctypes.c_uint64), ("_pad1", ctypes.c_uint64), ("st_size", ctypes.c_int64),
                  ("st_blksize", ctypes.c_int32), ("_pad2", ctypes.c_int32), ("st_blocks", ctypes.c_int64)]
    _STAT_TAIL = [("_unused", ctypes.c_int32 * 2)]
else:  # x86_64
    _STAT_HEAD = [("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64), ("st_nlink", ctypes.c_uint64),
                  ("st_mode", ctypes.c_uint32), ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
                  ("_pad0", ctypes.c_int32), ("st_rdev", ctypes.c_uint64), ("st_size", ctypes.c_int64),
                  ("st_blksize", ctypes.c_int64), ("st_blocks", ctypes.c_int64)]
    _STAT_TAIL = [("_reserved", ctypes.c_int64 * 3)]


class CStat(ctypes.Structure):
    """struct stat of this machine's libc (both libfuse versions take it as is)."""

    _fields_ = _STAT_HEAD + [("st_atim", Timespec), ("st_mtim", Timespec), ("st_ctim", Timespec)] + _STAT_TAIL


class CStatvfs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulong) for n in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                                             "f_ffree", "f_favail", "f_fsid", "f_flag", "f_namemax")] \
        + [("_spare", ctypes.c_int * 6)]


class EntryParam(ctypes.Structure):
    """struct fuse_entry_param (the same in libfuse 2 and 3 on 64-bit machines)."""

    _fields_ = [("ino", ctypes.c_uint64), ("generation", ctypes.c_uint64), ("attr", CStat),
                ("attr_timeout", ctypes.c_double), ("entry_timeout", ctypes.c_double)]


class Args(ctypes.Structure):
    """struct fuse_args."""

    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)), ("allocated", ctypes.c_int)]


def supported_machine() -> bool:
    """Whether struct stat is declared here for this machine."""
    return _MACHINE in ("x86_64", "aarch64")


def reply_prototypes(fi: type) -> list[tuple[str, Any, list[Any]]]:
    """(name, restype, argtypes) of the reply calls both versions have, for a library's fuse_file_info."""
    vp, ptr, i = ctypes.c_void_p, ctypes.POINTER, ctypes.c_int
    return [("fuse_reply_err", i, [vp, i]), ("fuse_reply_entry", i, [vp, ptr(EntryParam)]),
            ("fuse_reply_attr", i, [vp, ptr(CStat), ctypes.c_double]),
            ("fuse_reply_readlink", i, [vp, ctypes.c_char_p]), ("fuse_reply_open", i, [vp, ptr(fi)]),
            ("fuse_reply_buf", i, [vp, vp, ctypes.c_size_t]), ("fuse_reply_statfs", i, [vp, ptr(CStatvfs)]),
            ("fuse_reply_xattr", i, [vp, ctypes.c_size_t]), ("fuse_opt_free_args", None, [ptr(Args)])]


def load(name: str, prototypes: list[tuple[str, Any, list[Any]]]) -> ctypes.CDLL:
    """A library on a handle of its own, with these prototypes."""
    lib = ctypes.CDLL(name)
    for func_name, restype, argtypes in prototypes:
        func = getattr(lib, func_name)
        func.restype, func.argtypes = restype, argtypes
    return lib


# -- listings --------------------------------------------------------------------------------------
_DIRENT = struct.Struct("=QQII")  # struct fuse_dirent: ino, offset of the next entry, name length, type
# struct fuse_entry_out then struct fuse_attr (the kernel's, fuse.h): what READDIRPLUS puts before a dirent
_ENTRY_OUT = struct.Struct("=QQQQII" + "QQQqqqIIIIIIIIII")
_PADS = tuple(bytes(n) for n in range(8))
_NO_ENTRY = bytes(_ENTRY_OUT.size)  # node id 0: "no attributes for this one", the kernel asks if it needs them
Listing = tuple[bytes, list[int]]


def pack_dir(entries: list[tuple[bytes, int, int]]) -> Listing:
    """A listing as the kernel takes it (what fuse_add_direntry writes), and where each entry starts."""
    return _pack((b"", name, mode, ino) for name, mode, ino in entries)


def pack_dirplus(entries: list[tuple[bytes, int, int, Stat | None]], blksize: int = 0,
                 timeout: float = TIMEOUT) -> Listing:
    """A READDIRPLUS listing (what fuse_add_direntry_plus writes): each entry with its attributes, or
    none (None: the kernel will LOOKUP it if it needs to)."""
    sec = int(timeout)
    nsec = int((timeout - sec) * 1e9)
    entry_pack = _ENTRY_OUT.pack

    def attrs(st: Stat | None) -> bytes:
        if st is None:
            return _NO_ENTRY
        s_ino, s_mode, nlink, uid, gid, rdev, size, mtime = st
        t = math.floor(mtime)
        tn = int((mtime - t) * 1e9)
        return entry_pack(s_ino, 0, sec, sec, nsec, nsec, s_ino, size, (size + 511) >> 9, t, t, t, tn, tn, tn,
                          s_mode, nlink, uid, gid, rdev, blksize, 0)

    return _pack((attrs(st), name, mode, ino) for name, mode, ino, st in entries)


def _pack(rows: Iterable[tuple[bytes, bytes, int, int]]) -> Listing:
    """(prefix, name, type bits, inode) rows as dirents, each after its prefix, padded to 8 bytes."""
    parts: list[bytes] = []
    ends, pos = [0], 0
    add, pack, size = parts.append, _DIRENT.pack, _DIRENT.size
    for n, (prefix, name, mode, ino) in enumerate(rows, 1):
        length = len(name)
        head = len(prefix) + size
        pad = -(head + length) & 7
        add(prefix)
        add(pack(ino, n, length, mode >> 12))
        add(name)
        add(_PADS[pad])
        pos += head + length + pad
        ends.append(pos)
    return b"".join(parts), ends


def dir_slice(listing: Listing, offset: int, size: int) -> bytes:
    """The whole entries of a packed listing from entry number `offset` that fit in `size` bytes."""
    data, ends = listing
    start = ends[offset if 0 <= offset < len(ends) else -1]  # past the end (or nonsense): nothing more
    return data[start:ends[bisect.bisect_right(ends, start + size) - 1]]


def fill(st: Any, s: Stat, blksize: int = 0) -> None:
    """Fill a struct stat in place from a Stat tuple (st_blksize: the read size tools should use)."""
    st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, st.st_size, mtime = s
    st.st_blksize = blksize
    st.st_blocks = (st.st_size + 511) >> 9
    sec = math.floor(mtime)  # floor, not int(): a negative time still needs 0 <= tv_nsec < 1e9
    st.st_mtim.tv_sec = st.st_atim.tv_sec = st.st_ctim.tv_sec = sec
    st.st_mtim.tv_nsec = st.st_atim.tv_nsec = st.st_ctim.tv_nsec = int((mtime - sec) * 1e9)


def guard(lib: ctypes.CDLL, name: str, func: Callable[..., None]) -> Callable[..., None]:
    """Answer a request whose handler raised: OSError as its errno, anything unexpected as a logged EIO.

    Every handler replies as its very last step, so a raise means no reply has been sent yet.
    """
    reply_err = lib.fuse_reply_err

    def callback(req: int, *args: Any) -> None:
        try:
            func(req, *args)
        except OSError as e:
            reply_err(req, e.errno or errno.EIO)
        except Exception:  # a bug: say where, keep serving
            log.exception("FUSE %s failed", name)
            reply_err(req, errno.EIO)

    return callback


def lifecycle(func: Callable[..., None]) -> Callable[..., None]:
    """init/destroy: no reply to send, so a raise is only logged."""

    def callback(*args: Any) -> None:
        try:
            func(*args)
        except Exception:
            log.exception("FUSE %s failed", func.__name__)

    return callback


def _block_stop_signals() -> None:
    """In a helper thread: leave the stop signals to the loop's thread, which they must wake."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


class Stopper:
    """Ends the mount on SIGTERM/SIGINT/SIGHUP within a second, even while a request is still being served.

    libfuse's own handlers only set a flag that its loop reads between requests, so one request waiting for
    a long merged build kept the mount up for as long. Here Python's C-level handler wakes a thread, which
    detaches the mount (the kernel then ends the session) and, if the loop is still busy after STOP_GRACE,
    ends the process.
    """

    def __init__(self, mountpoint: bytes, exit_session: Callable[[], None]) -> None:
        self.mountpoint, self.exit_session = mountpoint, exit_session
        self.done = threading.Event()
        self._saved: dict[int, Any] = {}
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd: int | None = None

    def __enter__(self) -> Stopper:
        try:
            self._old_fd = signal.set_wakeup_fd(self._w)
            for sig in STOP_SIGNALS:
                self._saved[sig] = signal.signal(sig, lambda *_: None)
        except ValueError:  # not the main thread: signals are not ours to take
            self._old_fd = None
            return self
        self._watcher = threading.Thread(target=self._watch, name="imgfs-stop", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        os.write(self._w, b"\0")  # wake the watcher, which then just ends
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
            self._watcher.join(STOP_GRACE + 5)  # (it may be unmounting right now)
        os.close(self._r)
        os.close(self._w)

    def _watch(self) -> None:
        import select

        _block_stop_signals()
        while True:
            select.select([self._r], [], [])
            try:
                data = os.read(self._r, 64)
            except BlockingIOError:
                continue
            if self.done.is_set():
                return
            if any(b in {int(s) for s in STOP_SIGNALS} for b in data):
                break
        log.info("signal received: unmounting")
        self.exit_session()
        subprocess.run(["fusermount3" if _has("fusermount3") else "fusermount", "-u", "-z", "--",
                        os.fsdecode(self.mountpoint)], capture_output=True)
        if not self.done.wait(STOP_GRACE):
            log.warning("a request was still being served; ending now")
            logging.shutdown()
            os._exit(0)


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


class Bridge:
    """The request handlers, for a subclass that provides `lib` (with reply_prototypes) and the loop."""

    lib: ctypes.CDLL
    # The biggest READ the kernel sends (the version's module may raise it), also given as st_blksize: cat,
    # cp and the like then read that much at a time, and the kernel asks for as much in one request.
    max_read = 128 * 1024

    def __init__(self, ops: ImgfsOps, mountpoint: str, debug: bool = False) -> None:
        self.operations = ops
        self.mountpoint = mountpoint
        self.debug = debug
        self._readahead_due = self.max_read > _KERNEL_READAHEAD  # set on the first request after INIT
        self.no_open = False  # set in init() when the kernel understands ENOSYS from OPEN/OPENDIR
        self._entry = EntryParam(generation=1, attr_timeout=TIMEOUT, entry_timeout=TIMEOUT)
        self._stat = CStat()
        # Packed listings of the directories being read: a big one is read in several requests.
        self._listings: cachetools.LRUCache = cachetools.LRUCache(maxsize=16)
        self._buffer = ctypes.create_string_buffer(self.max_read)
        self._view = memoryview(self._buffer).cast("B")
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="imgfs-read",
                                        initializer=_block_stop_signals)

    def close(self) -> None:
        """Wait for the reads still running, then stop their threads."""
        self._pool.shutdown(wait=True)

    def run(self, table: ctypes.Structure, spec: list[tuple[str, Any]], writes: tuple[str, ...],
            args: list[str]) -> None:
        """Fill a libfuse operation table from `spec` ((name, prototype); c_void_p: left NULL) with this
        bridge's handlers (EROFS for `writes`), then serve until unmounted."""
        for name, proto in spec:
            if name in writes:
                setattr(table, name, proto(guard(self.lib, name, self.erofs)))
            elif name in ("init", "destroy"):
                setattr(table, name, proto(lifecycle(getattr(self, name))))
            elif proto is not ctypes.c_void_p:
                setattr(table, name, proto(guard(self.lib, name, getattr(self, name))))
        self._table = table  # the callbacks must outlive the session
        try:
            self.serve(os.fsencode(self.mountpoint), [b"imgfs"] + [os.fsencode(a) for a in args])
        finally:
            self.close()

    def loop(self, mountpoint: bytes, run: Callable[[], object], exit_session: Callable[[], None]) -> None:
        """Run a session loop with the signals handled; then wait for the reads still running, whose
        replies must reach the session before it is destroyed."""
        with Stopper(mountpoint, exit_session):
            try:
                run()
            finally:
                self.close()

    def serve(self, mountpoint: bytes, argv: list[bytes]) -> None:
        """Mount and run the version's session loop (the version's module provides it)."""
        raise NotImplementedError

    # -- lifecycle (called by the version's init/destroy) ----------------------------------------
    def _raise_readahead(self) -> None:
        """Let the kernel read ahead max_read bytes, so that a big read() becomes max_read-sized requests.

        The kernel caps readahead at 128 KiB for FUSE, whatever max_pages allows; only root may raise it
        (/sys/class/bdi). Done once the kernel has handled INIT, which would cap it again."""
        self._readahead_due = False
        target = os.fsencode(self.mountpoint)
        try:
            with open("/proc/self/mountinfo", "rb") as fh:  # not stat(): that would ask this very daemon
                dev = next((f[2] for f in (ln.split(b" ") for ln in fh) if len(f) > 4 and f[4] == target), None)
            if dev is not None:
                with open(b"/sys/class/bdi/" + dev + b"/read_ahead_kb", "w") as out:
                    out.write(str(self.max_read // 1024))
        except OSError:  # not root, or no sysfs: requests stay at the kernel's readahead size
            pass

    def started(self, proto_minor: int) -> None:
        """The mount is up: learn what the kernel understands."""
        self.no_open = proto_minor >= 29  # FUSE 7.29 (Linux 5.1): ENOSYS from OPEN/OPENDIR: "no need to ask"
        self.operations.init()

    def destroy(self, userdata: Any) -> None:
        """The mount is gone."""
        self.operations.destroy()

    # -- requests: each replies exactly once, as its last step ----------------------------------
    def lookup(self, req: int, parent: int, name: bytes) -> None:
        """An entry with its attributes; a missing name is a negative entry the kernel may keep."""
        if self._readahead_due:
            self._raise_readahead()
        if self.debug:
            log.debug("LOOKUP %d %s", parent, name.decode("utf-8", "backslashreplace"))
        e = self._entry
        try:
            st = self.operations.lookup_stat(parent, name)
        except FileNotFoundError:
            e.ino = 0
        else:
            e.ino = st[0]
            fill(e.attr, st, self.max_read)
        self.lib.fuse_reply_entry(req, ctypes.byref(e))

    def getattr(self, req: int, ino: int, fip: Any) -> None:
        """stat()."""
        if self._readahead_due:
            self._raise_readahead()
        fill(self._stat, self.operations.getattr(ino), self.max_read)
        self.lib.fuse_reply_attr(req, ctypes.byref(self._stat), TIMEOUT)

    def readlink(self, req: int, ino: int) -> None:
        """The target as stored."""
        self.lib.fuse_reply_readlink(req, self.operations.readlink(ino).split(b"\0", 1)[0])

    def open(self, req: int, ino: int, fip: Any) -> None:
        """ENOSYS where the kernel takes it as "open without asking"; else check and keep the pages."""
        if self.no_open:  # (the --debug log says what this ENOSYS means)
            raise OSError(errno.ENOSYS, "open without asking")
        fi = fip.contents
        self.operations.open(ino, fi.flags)
        fi.keep_cache = 1
        self.lib.fuse_reply_open(req, fip)

    def read(self, req: int, ino: int, size: int, offset: int, fip: Any) -> None:
        """Bytes straight from the archive here; reads that decompress go to the pool and reply from there."""
        buf, view = self._buffer, self._view
        if size > len(buf):  # more than negotiated: never answer it short
            buf = ctypes.create_string_buffer(size)
            view = memoryview(buf).cast("B")
        n = self.operations.read_into(ino, size, offset, view)
        if n is not None:
            self.lib.fuse_reply_buf(req, buf, n)
            return
        self._pool.submit(guard(self.lib, "read", self._slow_read), req, ino, size, offset)

    def _slow_read(self, req: int, ino: int, size: int, offset: int) -> None:
        data = self.operations.read(ino, size, offset)
        self.lib.fuse_reply_buf(req, data, len(data))

    def opendir(self, req: int, ino: int, fip: Any) -> None:
        """ENOSYS where the kernel then caches listings itself; else a handle whose listing it may keep."""
        if self.no_open:
            raise OSError(errno.ENOSYS, "open without asking")
        fi = fip.contents
        if hasattr(fi, "cache_readdir"):
            fi.cache_readdir = fi.keep_cache = 1
        self.lib.fuse_reply_open(req, fip)

    def readdir(self, req: int, ino: int, size: int, offset: int, fip: Any) -> None:
        """As many whole entries from `offset` (an entry number) as fit in `size` bytes."""
        self._reply_listing(req, ino, size, offset, False)

    def _reply_listing(self, req: int, ino: int, size: int, offset: int, plus: bool) -> None:
        key = (ino, plus)
        hit = self._listings.get(key) if offset else None
        if hit is None:
            ops = self.operations
            hit = pack_dirplus(ops.readdir_plus(ino), self.max_read) if plus else pack_dir(ops.readdir(ino))
            self._listings[key] = hit
        data = dir_slice(hit, offset, size)
        self.lib.fuse_reply_buf(req, data, len(data))

    def statfs(self, req: int, ino: int) -> None:
        """statvfs() fields."""
        stv = CStatvfs()
        for key, val in self.operations.statfs().items():
            setattr(stv, key, val)
        self.lib.fuse_reply_statfs(req, ctypes.byref(stv))

    def access(self, req: int, ino: int, mask: int) -> None:
        """access(): read yes, write EROFS."""
        self.operations.access(ino, mask)
        self.lib.fuse_reply_err(req, 0)

    def getxattr(self, req: int, ino: int, name: bytes, size: int) -> None:
        """One extended attribute, or its size when the caller passes no buffer."""
        self._reply_sized(req, self.operations.getxattr(ino, name), size)

    def listxattr(self, req: int, ino: int, size: int) -> None:
        """The NUL-separated attribute names, or their size when the caller passes no buffer."""
        self._reply_sized(req, b"".join(n + b"\0" for n in self.operations.listxattr(ino)), size)

    def _reply_sized(self, req: int, data: bytes, size: int) -> None:
        if not size:
            self.lib.fuse_reply_xattr(req, len(data))
        elif len(data) > size:
            self.lib.fuse_reply_err(req, errno.ERANGE)
        else:
            self.lib.fuse_reply_buf(req, data, len(data))

    def erofs(self, req: int, *args: Any) -> None:
        """Any write."""
        self.lib.fuse_reply_err(req, errno.EROFS)
