"""Mounting an archive (in the foreground, or as a daemon that answers before mount() returns) and unmounting."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import signal
import stat
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..archive import Archive, Image, open_archive
from ..errors import ImgfsError, SelectionError, UsageError
from ..stores import absolute, is_reference

READY = b"\0imgfs-ready\n"
FSTYPE = b"fuse.imgfs"  # how /proc/mounts shows an imgfs mount (subtype=imgfs)
READY_TIMEOUT = 30.0
BACKENDS = (3, 2)  # libfuse versions, preferred first
INSTALL_HINT = {3: "install it (Debian/Ubuntu: apt-get install fuse3 libfuse3-3)",
                2: "install it (Debian/Ubuntu: apt-get install libfuse2)"}
FUSE_ENV = "IMGFS_FUSE"  # the default for --fuse: 2 or 3
log = logging.getLogger("imgfs.fuse")


def _load_version(version: int) -> ModuleType:
    """The module driving one libfuse version (it loads the library on import), or an ImgfsError why not."""
    from .bridge import supported_machine

    if not supported_machine():
        raise ImgfsError(f"FUSE mounts are not supported on {os.uname().machine}")
    if version == 3:
        try:
            from . import fuse3
        except OSError as e:
            raise ImgfsError(f"libfuse 3 is not installed ({e}): {INSTALL_HINT[3]}") from None
        return fuse3
    # By soname: fusepy would otherwise search with ctypes.util.find_library, which runs `ldconfig -p`.
    os.environ.setdefault("FUSE_LIBRARY_PATH", "libfuse.so.2")
    try:
        from . import fuse2
    except ImportError as e:
        if "fuse" in str(e) and "libfuse" not in str(e):
            raise ImgfsError(f"the fusepy package is missing: pip install fusepy ({e})") from None
        raise ImgfsError(f"libfuse 2 is not usable ({e}): {INSTALL_HINT[2]}") from None
    except OSError as e:  # fusepy: "Unable to find libfuse"
        raise ImgfsError(f"libfuse 2 is not installed ({e}): {INSTALL_HINT[2]}") from None
    return fuse2


def requested_backend(version: int | str | None = None) -> int | None:
    """The libfuse version asked for: `version`, else $IMGFS_FUSE, else None (the best one there is)."""
    if version is None:
        version = os.environ.get(FUSE_ENV) or None
    if version is None:
        return None
    try:
        number = int(version)
    except ValueError:
        number = 0
    if number not in BACKENDS:
        raise UsageError(f"--fuse (or ${FUSE_ENV}) must be 2 or 3, not {version!r}")
    return number


def load_backend(version: int | str | None = None) -> ModuleType:
    """The backend module: the version asked for, or libfuse 3 when libfuse3.so.3 loads, else libfuse 2."""
    wanted = requested_backend(version)
    if wanted is not None:
        return _load_version(wanted)
    errors = []
    for v in BACKENDS:
        try:
            return _load_version(v)
        except ImgfsError as e:
            errors.append(str(e))
    raise ImgfsError("no FUSE library is usable: " + "; ".join(errors))


def describe_backend() -> str:
    """One line for --version and mount --help: which libfuse a mount would use, and what else is there."""
    try:
        chosen = load_backend()
    except ImgfsError as e:
        return f"FUSE: {e}"
    others = []
    for v in BACKENDS:
        if v != chosen.VERSION:
            with contextlib.suppress(ImgfsError):
                others.append(f"libfuse {_load_version(v).VERSION} with --fuse {v}")
    return f"FUSE: {chosen.describe()}" + (f"; also {', '.join(others)}" if others else "")


def _dead(mountpoint: str) -> ImgfsError:
    return ImgfsError(f"{mountpoint} is a dead mount (its process is gone): run 'imgfs umount {mountpoint}' first")


def _check_mountpoint(mountpoint: str, allow_nonempty: bool) -> str:
    """The mountpoint's absolute path, or an ImgfsError saying why it cannot be used."""
    mp = os.path.abspath(mountpoint)
    try:
        st = os.stat(mp)
    except FileNotFoundError:
        raise ImgfsError(f"mountpoint {mountpoint} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise _dead(mountpoint) from None
        raise ImgfsError(f"mountpoint {mountpoint}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ImgfsError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mp):
        try:
            os.statvfs(mp)  # the kernel may answer stat() from its cache; statfs always asks the daemon
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                raise _dead(mountpoint) from None
        raise ImgfsError(f"{mountpoint} is already a mount point")
    if not allow_nonempty and os.listdir(mp):
        raise ImgfsError(f"mountpoint {mountpoint} is not empty (use -o nonempty to mount over it)")
    if not os.path.exists("/dev/fuse"):
        raise ImgfsError("/dev/fuse is missing: load the fuse module (modprobe fuse), "
                         "or give the container --device /dev/fuse")
    return mp


def _escape(value: str) -> str:
    """A value safe inside libfuse's comma-separated -o list."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


# libfuse 2's high-level options: what they ask for, the low-level mount does anyway (inode numbers,
# kernel caching, long timeouts), so they are accepted and dropped rather than refused.
_HIGH_LEVEL = frozenset({"use_ino", "readdir_ino", "kernel_cache", "auto_cache", "noauto_cache", "entry_timeout",
                         "negative_timeout", "attr_timeout", "ac_attr_timeout", "hard_remove", "intr",
                         "intr_signal", "noforget", "nopath", "direct_io"})
OWNER_OPTIONS = ("uid", "gid", "umask")  # high-level options imgfs applies itself (ImgfsOps.getattr)


# Mount options that let an image's own files act on the host: its device nodes (a "c 1:5" node, mode
# 0666, reads the host's /dev/zero) and its set-user-ID programs. FUSE mounts go without them by default.
TRUST_OPTIONS = ("dev", "suid")


def fuse_options(archive: str, options: str | None, allow_other: bool, trusted: bool = False) -> dict[str, Any]:
    """The -o options for libfuse: read-only, named after the archive, plus the user's.

    dev and suid are refused unless `trusted` (the caller vouches for the image)."""
    opts: dict[str, Any] = {"ro": True, "fsname": _escape(absolute(archive)), "subtype": "imgfs"}
    if allow_other:
        opts["allow_other"] = True
    for item in (options or "").split(","):
        key, eq, value = item.strip().partition("=")
        if not key or key in _HIGH_LEVEL:
            continue
        if key == "rw":
            raise UsageError("imgfs mounts are read-only: option 'rw' is not supported")
        if key in TRUST_OPTIONS and not trusted:
            raise UsageError(f"option '{key}' would let the image's {'device nodes' if key == 'dev' else 'set-user-ID'}"
                             f" files act on this host: add --trusted-image if you trust the image")
        if key in OWNER_OPTIONS:
            try:
                number = int(value, 8 if key == "umask" else 10)
            except ValueError:
                raise UsageError(f"option {key}= needs a number ({'octal' if key == 'umask' else 'decimal'}),"
                                 f" not {value!r}") from None
            if not 0 <= number < (0o10000 if key == "umask" else 1 << 32):
                raise UsageError(f"option {key}={value} is out of range")
            opts[key] = number
            continue
        opts[key] = value if eq else True
    if opts.get("allow_other"):  # others get exactly what the modes allow them, never everything
        opts["default_permissions"] = True
    return opts


# Options libfuse 3 no longer knows (it refuses unknown ones): it mounts over a non-empty directory anyway.
_NOT_IN_3 = frozenset({"nonempty", "big_writes", "large_read"})


def _argv(opts: dict[str, Any], debug: bool, version: int) -> list[str]:
    """libfuse's command line: the options, and -d for its request log."""
    # One thread runs libfuse's loop (bridge.py): each callback needs the GIL anyway, and libfuse's worker
    # threads measured twice the CPU time per request (thread-state churn, GIL handoffs) for no gain. Only
    # reads that decompress go to a few threads of imgfs's own, so that they never hold up other requests.
    if version == 3:
        opts = {k: v for k, v in opts.items() if k not in _NOT_IN_3}
    args = ["-d"] if debug else []
    return args + ["-o", ",".join(k if v is True else f"{k}={v}" for k, v in opts.items())]


def _log_to(handler: logging.Handler, debug: bool) -> None:
    handler.setFormatter(logging.Formatter("imgfs[%(process)d]: %(levelname)s %(message)s"))
    for name in ("imgfs", "fuse"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(logging.DEBUG if debug else logging.INFO)
        lg.propagate = False


def _prebuild(images: list[Image]) -> None:
    """Build each image's merged tree while libfuse mounts and the caller moves on.

    Every look into merged/ or layers/ needs it (layer trees resolve hard links through it), so this is
    work the first access would otherwise wait for; layer trees themselves stay lazy.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))  # the loop's
    for img in images:
        with contextlib.suppress(Exception):  # the access that needs it will report the failure
            img.merged()


class _Stderr:
    """Keeps what libfuse writes to stderr while it mounts: the reason, when mounting fails."""

    def __init__(self) -> None:
        # A file, not a pipe: libfuse -d can write a lot, and must never block on it.
        self.file = open(os.memfd_create("imgfs-stderr"), "w+b")  # noqa: SIM115 - closed by release()
        try:
            self.saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to keep
            self.saved = -1
            return
        os.dup2(self.file.fileno(), 2)

    def release(self) -> bytes:
        """Give stderr back; return what was written to it meanwhile."""
        if self.saved < 0:
            if not self.file.closed:
                self.file.close()
            return b""
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.saved = -1
        self.file.seek(0)
        text = self.file.read()
        self.file.close()
        return text


_OPEN_REQUEST = re.compile(rb"^unique: (\d+), opcode: (OPEN|OPENDIR|FLUSH) ")
_ENOSYS_REPLY = re.compile(rb"^(\s*unique: (\d+), )error: -38 \(Function not implemented\)")


def _reword_debug_log() -> None:
    """libfuse -d logs the ENOSYS answer to OPEN/OPENDIR as an error; it is the zero-round-trip open
    working as meant, so say that (a thread between libfuse's stderr and where it went)."""
    target = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        opens: dict[bytes, bytes] = {}
        with open(r, "rb", buffering=0) as src:
            for line in iter(src.readline, b""):
                m = _OPEN_REQUEST.match(line)
                if m:
                    opens[m.group(1)] = m.group(2)
                m = _ENOSYS_REPLY.match(line)
                if m and m.group(2) in opens:
                    what = b"nothing to flush" if opens.pop(m.group(2)) == b"FLUSH" else b"opened without a round trip"
                    line = m.group(1) + b"ENOSYS: " + what + b" (the kernel no longer asks)" + line[m.end():]
                os.write(target, line)

    threading.Thread(target=run, name="imgfs-debug-log", daemon=True).start()


def _serve(archive: Archive, images: list[Image], mp: str, opts: dict[str, Any], debug: bool,
           on_ready: Callable[[], None] | None, version: int) -> None:
    """Run the filesystem until it is unmounted (SIGTERM, SIGINT and SIGHUP unmount it)."""
    backend = _load_version(version)
    from .layout import Layout
    from .ops import ImgfsOps

    owner = tuple(opts.get(k) for k in OWNER_OPTIONS)
    opts = {k: v for k, v in opts.items() if k not in OWNER_OPTIONS}  # libfuse's low level knows none of them
    ops = ImgfsOps(Layout(images), archive.path, log, owner)  # type: ignore[arg-type]
    captured = _Stderr()

    def ready() -> None:
        text = captured.release()
        if on_ready is not None:
            on_ready()
        if text:
            os.write(2, text)
        if debug:
            _reword_debug_log()

    ops.on_ready.append(ready)
    # Started once the kernel has the mount, so that the handshake does not wait for the GIL. Not for a
    # registry: there it would download every layer, where layers/X/ needs only X.
    if not is_reference(archive.path):
        ops.on_ready.append(lambda: threading.Thread(target=_prebuild, args=(images,), name="imgfs-prebuild",
                                                     daemon=True).start())
    try:
        backend.Bridge(ops, mp, _argv(opts, debug, version), debug)
    except RuntimeError:
        text = captured.release().decode("utf-8", "replace").strip().replace("\n", "; ")
        raise ImgfsError(f"cannot mount on {mp}: {text or 'libfuse failed'}") from None
    finally:
        captured.release()


def _daemon(status_fd: int, archive: str, chosen: list[int], mp: str, opts: dict[str, Any], debug: bool,
            log_file: str | None, open_kw: dict[str, Any], version: int) -> None:
    """The detached mount process: stderr goes to the caller until the mount is up, then to the log."""
    devnull = os.open(os.devnull, os.O_RDWR)
    logfd = devnull
    if log_file:
        logfd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        handler: logging.Handler = logging.StreamHandler(os.fdopen(os.dup(logfd), "a", buffering=1))
    elif os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler  # only here: it brings in socket and pickle

        handler = SysLogHandler(address="/dev/log")
    else:
        handler = logging.NullHandler()
    os.dup2(devnull, 0)
    os.dup2(logfd, 1)
    os.dup2(status_fd, 2)  # libfuse's own complaints reach the caller
    os.chdir("/")
    _log_to(handler, debug)

    def ready() -> None:
        os.write(status_fd, READY)
        os.dup2(logfd, 2)
        os.close(status_fd)
        log.info("mounted %s on %s", archive, mp)

    with open_archive(archive, warn=log.warning, **open_kw) as arch:
        _serve(arch, [arch.images[i] for i in chosen], mp, opts, debug, ready, version)
    log.info("unmounted %s", mp)


def _spawn(archive: str, chosen: list[int], mp: str, opts: dict[str, Any], debug: bool,
           log_file: str | None, open_kw: dict[str, Any], version: int) -> None:
    """Start the daemon (double fork, so init adopts it) and wait until its mount answers."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                _daemon(w, archive, chosen, mp, opts, debug, log_file, open_kw, version)
            rc = 0
        except BaseException as e:  # noqa: BLE001 - nothing may run on in the caller's code
            with contextlib.suppress(OSError):
                os.write(w, f"{e}\n".encode())
        finally:
            os._exit(rc)
    os.close(w)
    try:
        os.waitpid(pid, 0)
        _wait_ready(r, mp, READY_TIMEOUT)
    finally:
        os.close(r)


def _wait_ready(fd: int, mp: str, timeout: float) -> None:
    """Wait for the daemon's ready line, then until the mount answers; else raise what it said."""
    deadline = time.monotonic() + timeout
    data = b""
    while READY not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise ImgfsError(f"the mount on {mp} did not come up within {timeout:.0f} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            text = data.decode("utf-8", "replace").strip().replace("\n", "; ")
            raise ImgfsError(text or f"cannot mount on {mp}: the mount process died")
        data += chunk
    while not os.path.ismount(mp):
        if time.monotonic() > deadline:
            raise ImgfsError(f"the mount on {mp} does not answer")
        time.sleep(0.005)


def mount(archive: str, mountpoint: str, *, image: str | None = None, platform: str | None = None,
          foreground: bool = False, options: str | None = None, allow_other: bool = False,
          debug: bool = False, log_file: str | None = None, warn: Callable[[str], None] | None = None,
          cache_dir: str | None = None, use_cache: bool = True, store_options: dict[str, Any] | None = None,
          fuse: int | str | None = None, trusted_image: bool = False) -> None:
    """Mount an archive read-only; in the background (default) return once the mount answers.

    cache_dir/use_cache go to open_archive (the engine's index cache); fuse picks libfuse 2 or 3 (default:
    $IMGFS_FUSE, else 3 where it loads); trusted_image allows the dev and suid options."""
    version = load_backend(fuse).VERSION
    opts = fuse_options(archive, options, allow_other, trusted_image)
    mp = _check_mountpoint(mountpoint, "nonempty" in opts)
    archive = absolute(archive)  # oci:DIR:REF keeps its prefix and ref, docker://... is left as it is
    if log_file:
        log_file = os.path.abspath(log_file)
        try:
            with open(log_file, "a"):
                pass
        except OSError as e:
            raise ImgfsError(f"log file {log_file}: {e.strerror}") from None
    # The daemon is forked, not executed: credentials in store_options never reach a command line.
    open_kw: dict[str, Any] = {"cache_dir": cache_dir, "use_cache": use_cache, "store_options": store_options}
    with open_archive(archive, warn=warn, **open_kw) as arch:
        chosen = arch.select(image, platform)
        if not chosen:
            raise SelectionError(f"{archive}: the archive holds no image")
        from .layout import Layout

        Layout(chosen)  # refuses what cannot be mounted (too many layers), here rather than in the daemon
        if foreground:
            if not logging.getLogger("imgfs").hasHandlers():
                _log_to(logging.StreamHandler(), debug)
            _serve(arch, chosen, mp, opts, debug, None, version)
            return
        indices = [arch.images.index(img) for img in chosen]
    # rapidgzip's threads do not survive fork(): the daemon opens the archive again (cheap: the engine
    # caches indexes and seek points), after the errors a bad archive gives have reached the caller here.
    _spawn(archive, indices, mp, opts, debug, log_file, open_kw, version)


def _unescape(field: bytes) -> bytes:
    """A /proc/mounts field as the path it is (octal escapes for space, tab, newline, backslash)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def _mount_entry(mp: str) -> tuple[bytes, bytes] | None:
    """(source, fstype) of the last mount on `mp` in /proc/mounts (a dead mount is listed too), or None."""
    target = os.fsencode(mp)
    found = None
    try:
        with open("/proc/mounts", "rb") as fh:
            for line in fh:
                fields = line.split(b" ")
                if len(fields) >= 3 and _unescape(fields[1]) == target:
                    found = (_unescape(fields[0]), fields[2])
    except OSError:
        return None
    return found


def umount(mountpoint: str, lazy: bool = False) -> None:
    """Unmount an imgfs mount (fusermount3 -u, or fusermount -u; -z when lazy); also clears a mount whose
    process died. Anything that is not a FUSE mount of imgfs is refused."""
    mp = os.path.abspath(mountpoint)
    entry = _mount_entry(mp)
    if entry is None:
        if not os.path.lexists(mp):
            raise ImgfsError(f"{mountpoint} does not exist")
        raise ImgfsError(f"{mountpoint} is not mounted")
    if entry[1] != FSTYPE:
        raise ImgfsError(f"{mountpoint} is not an imgfs mount (it is {entry[1].decode(errors='replace')}): "
                         f"use umount(8) for it")
    import shutil  # here: the mount path does not need it (start-up time)
    import subprocess

    # Either unmounts any FUSE mount of this user (Debian's fuse3 links fusermount to fusermount3).
    tool = next((t for t in ("fusermount3", "fusermount") if shutil.which(t)), None)
    if tool:
        cmd = [tool, "-u"] + (["-z"] if lazy else []) + ["--", mp]
    else:
        cmd = ["umount"] + (["-l"] if lazy else []) + ["--", mp]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        msg = res.stderr.strip().replace("\n", "; ") or f"{cmd[0]} failed"
        hint = " (files are in use: close them, or use --lazy)" if "busy" in msg.lower() else ""
        raise ImgfsError(f"cannot unmount {mountpoint}: {msg}{hint}")
