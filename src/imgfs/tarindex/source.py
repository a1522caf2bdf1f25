"""Byte sources: random access (`pread`) to a file, a slice of it, or a decompressed stream."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from ..errors import FormatError, ImgfsError, TruncatedError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_ZSTD_FEED = 2048  # zstd input fed per call: at most 32768x that comes out (RLE blocks), so a bomb stays small
_IDENTITY_BLOCK = 4096  # the first and last bytes of a file, hashed into its identity


class Source(Protocol):
    """Anything that serves `size` bytes at random offsets: `size` and `pread` are all a source must have.

    Optional capabilities, each with a default; the helpers below read them (SourceBase has them all):
    - `window` (int): how many bytes a scan should read at once; a source where each read costs a round
      trip (a decompressor's seek, a network request) asks for big windows. Default: the scanner's.
    - `cheap_reread` (bool): whether reading bytes again costs about what a local pread does. False where
      it means decompressing (gzip) or the network: the cache then trusts only indexes of this very blob.
    - `local_file()`: (FileSource, offset) where byte 0 of this source lies in a local file, its bytes as
      they are there (zero-copy reads, a child process reading the file itself); None otherwise.
    - `check()`: raise SourceChanged if the bytes underneath changed since the source was opened.
    - `close()`: release descriptors and copies; a closed source may be reopened by its next use.
    """

    size: int

    def pread(self, offset: int, length: int) -> bytes:
        """Return exactly `length` bytes at `offset`, or raise TruncatedError."""
        ...


class SourceChanged(FormatError):
    """The file under a source changed (size, mtime, ctime) since it was opened: its old index no longer fits."""

    def __init__(self, message: str, why: str = "its contents") -> None:
        super().__init__(message)
        self.why = why  # what differs, for a caller's own message


class OutOfDescriptors(ImgfsError):
    """The process may open no more files (ulimit -n): said in one line, never taken for damage."""


def no_more_fds(e: OSError, what: str) -> None:
    """Raise the one clear error for running out of file descriptors; any other OSError is the caller's."""
    if e.errno not in (errno.EMFILE, errno.ENFILE):
        return
    import resource  # here: only this rare failure needs it

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    raise OutOfDescriptors(f"{what}: too many open files (the limit is {soft}; raise it with ulimit -n)") from None


class SourceBase:
    """The optional capabilities of a Source with their defaults (see Source)."""

    cheap_reread = True

    def local_file(self) -> tuple[FileSource, int] | None:
        """Where byte 0 lies in a local file, or None."""
        return None

    def pass_file(self) -> tuple[FileSource, int] | None:
        """A local file holding these bytes for one full pass by a child process (made on demand), or None."""
        return self.local_file()

    def check(self) -> None:
        """Raise SourceChanged if the bytes underneath changed; the default source cannot tell."""

    def close(self) -> None:
        """Release what the source holds."""


def local_file(src: Source) -> tuple[FileSource, int] | None:
    """(FileSource, offset) where `src`'s byte 0 lies in a local file, its bytes as they are; else None."""
    at = getattr(src, "local_file", None)
    return at() if at is not None else None


def pass_file(src: Source) -> tuple[FileSource, int] | None:
    """(FileSource, offset) of a local file holding `src`'s bytes for a full pass: where they lie, or a copy
    the source makes of them (a registry blob downloads itself once, verified); else None."""
    at = getattr(src, "pass_file", None)
    return at() if at is not None else local_file(src)


def rereads_cheaply(src: Source) -> bool:
    """Whether reading `src` again costs about a local pread (not decompressing, not the network)."""
    return bool(getattr(src, "cheap_reread", True))


def check_source(src: Source) -> None:
    """Raise SourceChanged if the bytes under `src` changed since it was opened (a no-op where it cannot tell)."""
    check = getattr(src, "check", None)
    if check is not None:
        check()


def close_source(src: Source | None) -> None:
    """Close `src` where it can be closed."""
    close = getattr(src, "close", None)
    if close is not None:
        close()


class FileSource(SourceBase):
    """A whole file on disk, read with os.pread (thread-safe, no shared file position).

    `watch`: every read checks (one fstat) that the file is the one opened, so an archive rewritten in
    place answers an error, never other bytes. Cache files, whose times the cache itself updates, do not.
    """

    def __init__(self, path: str | os.PathLike[str], *, fd: int | None = None, watch: bool = True) -> None:
        self.path = os.fspath(path)
        if fd is None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                no_more_fds(e, self.path)
                raise FormatError(f"{self.path}: cannot open: {e.strerror}") from None
        self.fd = fd
        st = os.fstat(self.fd)
        self.size = st.st_size
        self.watch = watch
        self._stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)
        h = hashlib.blake2b(digest_size=8)
        if self.size:
            h.update(self._read(0, min(_IDENTITY_BLOCK, self.size)))
            h.update(self._read(max(0, self.size - _IDENTITY_BLOCK), min(_IDENTITY_BLOCK, self.size)))
        # ctime cannot be set back (`cp -p` and `rsync -t` restore the mtime), and the hash of the first and
        # last blocks tells two files apart even where the times say nothing.
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, h.hexdigest())

    def _read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            # pread may return short on huge requests; finish the read before judging.
            parts = [data]
            got = len(data)
            while got < length:
                more = os.pread(self.fd, length - got, offset + got)
                if not more:
                    raise TruncatedError(
                        f"{self.path}: expected {length} bytes at offset {offset}, file ends after {got}"
                    )
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data

    def pread(self, offset: int, length: int) -> bytes:
        """Return `length` bytes at `offset`; a short read means the file shrank, a changed stamp that it changed."""
        data = self._read(offset, length)
        if self.watch:
            self.check()  # after the read: a change made before it had finished shows in the times by now
        return data

    def check(self) -> None:
        """Raise SourceChanged if the file's size, mtime or ctime differ from when it was opened (one fstat)."""
        if self.fd < 0:
            return
        st = os.fstat(self.fd)
        size, mtime, ctime, nlink = self._stamp
        if st.st_ctime_ns == ctime and st.st_mtime_ns == mtime and st.st_size == size:
            return
        if st.st_size != size or st.st_mtime_ns != mtime or st.st_nlink == nlink:
            why = "its size" if st.st_size != size else "its modification or change time"
            raise SourceChanged(f"{self.path}: the file changed since it was opened ({why} differs); open it again",
                                why)
        # Only a link was made or removed (the archive deleted, or replaced by a rename): the bytes are the
        # same. From now on, a change of ctime is measured from here.
        self._stamp = (size, mtime, st.st_ctime_ns, st.st_nlink)

    def local_file(self) -> tuple[FileSource, int]:
        """This very file, from its first byte."""
        return self, 0

    def close(self) -> None:
        """Close the file descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SourceFile(io.RawIOBase):
    """A seekable, read-only file object over a Source, for libraries that want one (progress optional)."""

    def __init__(self, src: Source, progress: Callable[[int, int], None] | None = None) -> None:
        self.src = src
        self.pos = 0
        self.progress = progress
        self._next = 64 << 20

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.src.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self.src.size - self.pos)
        if n <= 0:
            return 0
        data = self.src.pread(self.pos, n)
        b[:n] = data
        self.pos += n
        if self.progress is not None and self.pos >= self._next:
            self._next = self.pos + (64 << 20)
            self.progress(self.pos, self.src.size)
        return n


class SliceSource(SourceBase):
    """A window [base, base+size) of another source: offsets compose through nesting."""

    def __init__(self, parent: Source, base: int, size: int) -> None:
        self.parent = parent
        self.base = base
        self.size = size

    @property
    def cheap_reread(self) -> bool:  # type: ignore[override]
        """As cheap as the source it is a window of."""
        return rereads_cheaply(self.parent)

    def pread(self, offset: int, length: int) -> bytes:
        """Read inside the window; reading past its end is a truncation."""
        if offset < 0 or offset + length > self.size:
            raise TruncatedError(f"read of {length} bytes at {offset} past the end of a {self.size}-byte member")
        return self.parent.pread(self.base + offset, length)

    def local_file(self) -> tuple[FileSource, int] | None:
        """The parent's local file, this window's base added (the one walk down a chain of slices)."""
        at = local_file(self.parent)
        return None if at is None else (at[0], at[1] + self.base)

    def check(self) -> None:
        """The parent's check."""
        check_source(self.parent)


def sniff_compression(head: bytes) -> str | None:
    """Name the compression of a stream from its first bytes: 'gzip', 'zstd' or None."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head[:4] == ZSTD_MAGIC:
        return "zstd"
    if head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        raise FormatError("bzip2/xz compressed data is not supported (only gzip and zstd)")
    return None


class NoRoom(FormatError):
    """A decompressed copy does not fit in the free space where it was to go (no bomb: the disk is small)."""


class _SourceReader:
    """A sequential file-like reader over a Source, for decompressors."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.src.size - self.pos
        n = min(n, self.src.size - self.pos)
        if n <= 0:
            return b""
        data = self.src.pread(self.pos, n)
        self.pos += n
        return data

    def readable(self) -> bool:  # zstandard asks
        return True


class _Inflater:
    """One gzip member or zstd frame, decompressed with a bound on the bytes each call may return."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "gzip":
            self._d: Any = zlib.decompressobj(31)
        else:
            import zstandard

            self._d = zstandard.ZstdDecompressor().decompressobj()
        self._tail = b""
        self._full = False  # the last gzip call filled its bound: zlib may hold more output

    def feed(self, chunk: bytes) -> None:
        """Give the next compressed bytes (only once the previous ones are used up)."""
        self._tail = chunk

    def pending(self) -> bool:
        """Whether fed bytes wait to be decompressed."""
        return bool(self._tail) or self._full

    def next(self) -> bytes:
        """Up to ~_CHUNK decompressed bytes (zstd: ~64 MiB at worst) from what was fed."""
        if self.kind == "gzip":
            data = self._d.decompress(self._tail, _CHUNK)
            self._tail = self._d.unconsumed_tail
            self._full = len(data) == _CHUNK
            return data
        # zstandard's decompress() has no output bound: give it small pieces (a 2 KiB piece of RLE blocks is
        # 64 MiB at most), so a bomb frame cannot come out whole in one call.
        piece, self._tail = self._tail[:_ZSTD_FEED], self._tail[_ZSTD_FEED:]
        return self._d.decompress(piece)

    @property
    def eof(self) -> bool:
        """The member or frame ended."""
        return self._d.eof

    def unused(self) -> bytes:
        """Bytes fed past the end of the member or frame: the next one's."""
        if self.kind == "gzip":
            # zlib moves all input left at the member's end into unused_data; unconsumed_tail may still hold
            # a stale copy of it from the bounded call before (taking both would read it twice).
            return self._d.unused_data
        return self._d.unused_data + self._tail


def decompress_to(src: Source, kind: str, out: BinaryIO, limit: int | None = None, room: int | None = None) -> int:
    """Decompress all of `src` (gzip, multi-member too, or zstd) into `out`; return the size.

    Past `limit` bytes it is a bomb (FormatError); past `room` the copy does not fit where it goes (NoRoom).
    Memory stays bounded: no call returns more than a few MiB at a time.
    """
    if kind not in ("gzip", "zstd"):
        raise FormatError(f"unknown compression {kind!r}")
    if kind == "zstd":
        try:
            import zstandard
        except ImportError:  # pragma: no cover - a declared dependency
            raise FormatError("zstd data needs the 'zstandard' package") from None
        error: type[Exception] = zstandard.ZstdError
    else:
        error = zlib.error
    total = 0
    # Read in order only, the first chunk included: a pipe's bytes can be read once (stream.py).
    reader = _SourceReader(src)
    chunk = reader.read(_CHUNK)
    if kind == "zstd" and limit is not None:
        try:
            declared = zstandard.frame_content_size(chunk[:18])  # -1: not declared
        except zstandard.ZstdError:
            declared = -1  # not a frame header: the decompressor below says what is wrong
        if declared > limit:
            raise _bomb(limit)
    d = _Inflater(kind)
    started = False  # bytes of the current gzip member / zstd frame have been fed
    while True:
        if not chunk:
            break
        while chunk:
            if not started:
                # Between members: zero padding (block devices, some tools) is skipped, as gzip(1) does.
                chunk = chunk.lstrip(b"\x00")
                if not chunk:
                    break
            d.feed(chunk)
            chunk = b""
            started = True
            while d.pending() and not d.eof:
                try:
                    data = d.next()
                except error as e:
                    raise FormatError(f"corrupt {kind} data: {e}") from None
                total += len(data)
                if limit is not None and total > limit:
                    raise _bomb(limit)
                if room is not None and total > room:
                    raise NoRoom(f"decompresses to more than the {room} bytes free for its copy")
                out.write(data)
            if d.eof:
                # pigz and `cat a.gz b.gz` give several members, zstd several frames: go on with the next.
                chunk = d.unused()
                d = _Inflater(kind)
                started = False
        chunk = reader.read(_CHUNK)
    if started:
        raise TruncatedError(f"{kind} stream ends early (truncated)")
    return total


def _bomb(limit: int) -> FormatError:
    return FormatError(f"decompresses to more than {limit} bytes (a decompression bomb): refused")


BOMB_FLOOR = 4 << 30  # a stream may always decompress to this much
BOMB_RATIO = 256  # beyond the floor, to at most this many times its compressed size


def bomb_limit(src: Source) -> int:
    """How far a decompressed copy of `src` may grow before it is taken for a bomb."""
    return max(BOMB_FLOOR, BOMB_RATIO * src.size)


def room_in(where: str | None) -> int | None:
    """The bytes a copy may take in `where` (default: $TMPDIR): 80% of the free space; None if unknown."""
    import shutil  # here, as below: only spooling needs them, and they cost start-up time
    import tempfile

    try:
        return int(shutil.disk_usage(where or tempfile.gettempdir()).free * 0.8)
    except OSError:
        return None


class _OpenCopies:
    """The decompressed copies open at once, bounded: each holds a descriptor, so an LRU closes idle ones.

    A closed copy reopens on its next use (a cached one from the cache, a private one by decompressing
    again), so with `ulimit -n 32` and 40 compressed layers every layer still reads. Weak references: the
    LRU never keeps a source alive.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: OrderedDict[int, weakref.ref[LazySource]] = OrderedDict()
        self._budget = 0

    def budget(self) -> int:
        """A quarter of the descriptor limit, at least 4, at most 1024."""
        if not self._budget:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self._budget = 1024 if soft == resource.RLIM_INFINITY else max(4, min(1024, soft // 4))
        return self._budget

    def used(self, src: LazySource) -> None:
        """`src` holds an open copy and was used just now: close the least recently used idle ones over budget."""
        with self._lock:
            self._open[id(src)] = weakref.ref(src)
            self._open.move_to_end(id(src))
            if len(self._open) <= self.budget():
                return
            for k in [k for k, r in self._open.items() if r() is None]:  # sources gone without a close()
                del self._open[k]
            over = len(self._open) - self.budget()
            victims = [r() for k, r in self._open.items() if k != id(src)][:max(0, over)]
        for s in victims:
            if s is not None:
                s.close_if_idle()

    def closed(self, src: LazySource) -> None:
        """`src` holds no copy any more."""
        with self._lock:
            self._open.pop(id(src), None)


_COPIES = _OpenCopies()


class LazySource(SourceBase):
    """A copy of `src` made on first use (decompressed): size and reads go to it; subclasses say how."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self._lock = threading.Lock()
        self._inner: Source | None = None
        self._busy = 0  # reads under way: the LRU never closes a copy while one runs

    def _make(self) -> Source:
        raise NotImplementedError

    def _acquire(self) -> Source:
        with self._lock:
            if self._inner is None:
                self._inner = self._make()
            self._busy += 1
            inner = self._inner
        _COPIES.used(self)
        return inner

    def _release(self) -> None:
        with self._lock:
            self._busy -= 1

    @property
    def size(self) -> int:  # type: ignore[override]
        """The size of the copy (made on the first call)."""
        inner = self._acquire()
        try:
            return inner.size
        finally:
            self._release()

    def pread(self, offset: int, length: int) -> bytes:
        """Read from the copy (made on the first call; a copy is as its source was then, so it needs no check)."""
        inner = self._acquire()
        try:
            return inner.pread(offset, length)
        finally:
            self._release()

    def check(self) -> None:
        """Raise SourceChanged if what the copy was made from changed since."""
        check_source(self.src)

    def close_if_idle(self) -> None:
        """Close the copy unless a read is using it (never waits: the LRU calls this from other readers)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._busy == 0:
                self._close_locked()
        finally:
            self._lock.release()

    def _close_locked(self) -> None:
        close_source(self._inner)
        self._inner = None
        _COPIES.closed(self)

    def close(self) -> None:
        """Close the copy (a private one is gone then; a cached one stays on disk)."""
        with self._lock:
            self._close_locked()


class SpoolSource(LazySource):
    """A compressed source decompressed once, on first use, into a private temporary file."""

    def __init__(self, src: Source, kind: str, spool_dir: str | None = None) -> None:
        super().__init__(src)
        self.kind = kind
        self.spool_dir = spool_dir

    def _make(self) -> Source:
        import tempfile

        try:
            fd, path = tempfile.mkstemp(prefix="imgfs-spool-", dir=self.spool_dir)
        except OSError as e:
            no_more_fds(e, "decompressing a layer")
            raise FormatError(
                f"cannot make a temporary copy in {self.spool_dir or tempfile.gettempdir()}: {e.strerror}") from None
        try:
            os.unlink(path)  # the open descriptor keeps the data; nothing is left behind, even after a crash
            with os.fdopen(os.dup(fd), "wb", buffering=_CHUNK) as out:
                try:
                    decompress_to(self.src, self.kind, out, bomb_limit(self.src), room_in(self.spool_dir))
                except NoRoom as e:
                    raise NoRoom(f"no room in {self.spool_dir or tempfile.gettempdir()} to decompress: {e}") from None
                except OSError as e:
                    raise FormatError(f"cannot write a temporary copy: {e.strerror}") from None
            return FileSource(path, fd=os.dup(fd), watch=False)
        finally:
            os.close(fd)
