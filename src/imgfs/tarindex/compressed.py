"""Random access into compressed streams: gzip through persisted seek points, zstd through a cached spool."""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import json
import os
import struct
import sys
import threading
import weakref
import zlib
from array import array
from collections.abc import Callable
from typing import BinaryIO

from ..errors import FormatError, TruncatedError
from .source import (
    FileSource,
    LazySource,
    NoRoom,
    SliceSource,
    Source,
    SourceBase,
    SourceFile,
    SpoolSource,
    bomb_limit,
    check_source,
    close_source,
    decompress_to,
    local_file,
    pass_file,
    sniff_compression,
)
from .store import CacheDamage, Store

_OPEN: weakref.WeakSet[GzipSource] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # rapidgzip aborts the interpreter if its worker threads outlive it: close every file first.
    for g in list(_OPEN):
        g.close()


SMALL_GZIP = 8 << 20  # below this, one zlib pass into a temporary file beats a child process and seek points
_MAX_POINTS = 1 << 30  # seek points of a stream: a window of 32 KiB per few MiB, so far below this
# The child's program: imgfs from the folder the parent imported it from, then gzpass (see _first_pass).
_GZPASS = "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); from imgfs.tarindex import gzpass; gzpass.run()"


class GzipSource(SourceBase):
    """A gzip stream (multi-member too) read at random offsets through rapidgzip's seek points.

    The first full pass records a seek point every few MiB; the points are saved in the store, so a later
    open reads a file deep inside the stream by decompressing one span, not the stream from its start.
    That first pass runs in a child process (see gzpass.py). Small streams, streams rapidgzip refuses (zero
    padding after the last member, damage) and streams that are not a window of a file fall back to a
    one-time zlib decompression into a private temporary file, which tolerates padding and names the damage.
    rapidgzip's threads do not survive fork(): a process that forks must open its archives after the fork.
    """

    window = 4 << 20  # scan in big windows: each window costs a seek into the stream
    cheap_reread = False  # reading headers again means decompressing

    def __init__(self, src: Source, store: Store | None = None, key: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.src = src
        self.store = store
        self.key = key
        self.progress = progress
        self._lock = threading.Lock()
        self._file = None
        self._size: int | None = None
        self._points: bytes | None = None  # cached seek points, loaded into rapidgzip on the first read
        self._fallback: Source | None = None
        _OPEN.add(self)

    def _rapidgzip(self, points: bytes):  # -> rapidgzip.RapidgzipFile with the seek points loaded
        try:
            import rapidgzip
        except ImportError:  # pragma: no cover - a declared dependency
            raise FormatError("gzip data needs the 'rapidgzip' package") from None
        # rapidgzip may abort on an exception inside its reads: it reads the file unwatched, and pread()
        # checks before and after it instead.
        at = local_file(self.src)
        raw = self.src if at is None else SliceSource(FileSource(at[0].path, fd=at[0].fd, watch=False), at[1],
                                                        self.src.size)
        f = rapidgzip.RapidgzipFile(SourceFile(raw), parallelization=os.cpu_count() or 1)
        try:
            f.import_index(io.BytesIO(points))
        except Exception:
            f.close()
            raise
        return f

    def _prepare(self) -> None:
        """Know the uncompressed size: from cached seek points, else by making them (caller holds the lock).

        Cached points are only loaded into rapidgzip on the first read (_open): a merged tree built from
        cached indexes needs every layer's size, not its decompressor (rapidgzip takes ~20 ms to load one).
        """
        if self._size is not None or self._fallback is not None:
            return
        meta = None
        if self.store and self.key:
            try:
                meta = self.store.read("gz", self.key, ".gzi", limit=_MAX_POINTS)
            except CacheDamage:
                self.store.warn_once(f"cache: seek points for {self.key} are damaged; rebuilding them")
        if meta is not None and meta[:16].isdigit():
            self._size, self._points = int(meta[:16]), meta[16:]
            return
        self._make()

    def _open(self) -> None:
        """Be ready to read: the size known and the decompressor loaded (caller holds the lock)."""
        self._prepare()
        if self._file is None and self._fallback is None:
            try:
                self._file = self._rapidgzip(self._points or b"")
            except Exception:  # noqa: BLE001 - any failure means: make the points again
                self.store.warn_once(f"cache: seek points for {self.key} unreadable; rebuilding them")  # type: ignore
                self._size = None
                self._make()
            self._points = None

    def _make(self) -> None:
        """Make the seek points in a first pass over the stream, or fall back to a private copy."""
        at = pass_file(self.src) if self.src.size >= SMALL_GZIP else None
        made = self._first_pass(at[0], at[1]) if at is not None and at[0].fd >= 0 else None
        if made is None:
            self._fallback = SpoolSource(self.src, "gzip")
            return
        size, points = made
        self._file = self._rapidgzip(points)
        self._size = size
        if self.store is not None and self.key is not None:
            self.store.write("gz", self.key, ".gzi", b"%016d" % size + points)

    def _first_pass(self, f: FileSource, base: int) -> tuple[int, bytes] | None:
        """Run gzpass in a child; (size, seek points), or None when the stream needs the slow path.

        The child reads the very file opened here (its descriptor is passed on, not its path), and imports
        imgfs from where this process did: `-I` keeps the working directory, PYTHONPATH and the user's
        site-packages out of its sys.path, so a planted ./imgfs can never run.
        """
        import subprocess  # here: only a first pass needs them (start-up time)
        import tempfile

        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds imgfs/
        try:
            cwd = os.getcwd()
        except OSError:  # a working directory deleted under us is on no path
            cwd = ""
        path = [here] + [p for p in sys.path if os.path.isabs(p) and p not in (cwd, here)]
        fd, out = tempfile.mkstemp(prefix="imgfs-gzi-")
        os.close(fd)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _GZPASS, json.dumps(path), str(f.fd), str(base), str(self.src.size),
                 out],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                pass_fds=(f.fd,))
            size = None
            assert proc.stdout is not None
            for line in proc.stdout:
                tag, _, rest = line.partition(" ")
                if tag == "P" and self.progress is not None:
                    done, total = rest.split()
                    self.progress(int(done), int(total))
                elif tag == "S":
                    size = int(rest)
            if proc.wait() != 0 or size is None:
                return None
            with open(out, "rb") as fh:
                return size, fh.read()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(out)

    @property
    def size(self) -> int:  # type: ignore[override]
        """The uncompressed size (the first call reads the whole stream once)."""
        with self._lock:
            self._prepare()
            if self._fallback is None:
                return self._size  # type: ignore[return-value]
            fallback = self._fallback
        return fallback.size

    def pread(self, offset: int, length: int) -> bytes:
        """Read `length` uncompressed bytes at `offset`."""
        with self._lock:
            self._open()
            fallback = self._fallback
            if fallback is None:
                # rapidgzip must never meet a stream that shrank under it (it may abort): look first.
                check_source(self.src)
                f = self._file
                try:
                    f.seek(offset)
                    data = f.read(length)
                except Exception as e:  # noqa: BLE001
                    raise FormatError(f"corrupt or truncated gzip data: {e}") from None
        if fallback is not None:
            return fallback.pread(offset, length)  # a copy, as the stream was when it was made
        if len(data) != length:
            raise TruncatedError(f"gzip stream ends before offset {offset + length}")
        check_source(self.src)  # a stream changed while it was read may have given other bytes: never serve them
        return data

    def check(self) -> None:
        """Raise SourceChanged if the compressed stream changed."""
        check_source(self.src)

    def close(self) -> None:
        """Release the decompressor (or the temporary copy)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._size = self._points = None  # a later use starts again from the cached seek points
            close_source(self._fallback)

    def __del__(self) -> None:
        if self._file is not None:
            self._file.close()


SPOOL_BLOCK = 32 << 10  # a zstd spool keeps a CRC-32 per block: a read checks the blocks it touches
_SPOOL_TAIL = struct.Struct("<8sQII")  # tag, data size, block size, CRC-32 of the table of block CRCs
_SPOOL_TAG = b"IMGFSZS1"


class SpoolDamaged(FormatError):
    """A block of a cached zstd spool fails its checksum."""


class _SpoolWriter:
    """Writes the decompressed bytes, a CRC-32 per block; finish() appends the table and the trailer."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.size, self.crcs, self.part = fh, 0, array("I"), b""

    def write(self, data: bytes) -> int:
        self.fh.write(data)
        self.size += len(data)
        mv = memoryview(data)
        if self.part:
            need = SPOOL_BLOCK - len(self.part)
            self.part += bytes(mv[:need])
            mv = mv[need:]
            if len(self.part) < SPOOL_BLOCK:
                return len(data)
            self.crcs.append(zlib.crc32(self.part))
            self.part = b""
        whole = len(mv) - len(mv) % SPOOL_BLOCK
        crc32, add = zlib.crc32, self.crcs.append
        for at in range(0, whole, SPOOL_BLOCK):
            add(crc32(mv[at:at + SPOOL_BLOCK]))
        self.part = bytes(mv[whole:])
        return len(data)

    def finish(self) -> None:
        if self.part:
            self.crcs.append(zlib.crc32(self.part))
        if sys.byteorder != "little":
            self.crcs.byteswap()
        table = self.crcs.tobytes()
        self.fh.write(table + _SPOOL_TAIL.pack(_SPOOL_TAG, self.size, SPOOL_BLOCK, zlib.crc32(table)))


class CheckedSpool(SourceBase):
    """A zstd spool from the cache: every block a read touches is checked against its CRC-32 first.

    Hashing the whole spool on each open would cost a full read of it; a block check costs a CRC-32 of
    what is read anyway (at most two partial blocks more), and a damaged block is an error, never bytes.
    """

    def __init__(self, fd: int, name: str) -> None:
        self.file = FileSource(name, fd=fd, watch=False)  # the cache marks its files used: times change
        try:
            total = self.file.size
            if total < _SPOOL_TAIL.size:
                raise CacheDamage(f"{name} is cut short")
            tag, size, block, crc = _SPOOL_TAIL.unpack(self.file.pread(total - _SPOOL_TAIL.size, _SPOOL_TAIL.size))
            blocks = -(-size // SPOOL_BLOCK)
            if tag != _SPOOL_TAG or block != SPOOL_BLOCK or size + 4 * blocks + _SPOOL_TAIL.size != total:
                raise CacheDamage(f"{name} is not a spool imgfs wrote, or is cut short")
            table = self.file.pread(size, 4 * blocks)
            if zlib.crc32(table) != crc:
                raise CacheDamage(f"{name}: its table of checksums is damaged")
        except BaseException:
            self.file.close()
            raise
        self.crcs = array("I", table)
        if sys.byteorder != "little":
            self.crcs.byteswap()
        self.size = size

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, each block they lie in checked; SpoolDamaged if one fails.

        The bytes asked for are read as they are (no copy); the parts of their first and last blocks
        outside them are read apart, and every block's CRC is chained over its pieces.
        """
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedError(f"read of {length} bytes at {offset} past the end of a {self.size}-byte spool")
        if not length:
            return b""
        end = offset + length
        first, last = offset // SPOOL_BLOCK, (end - 1) // SPOOL_BLOCK
        start, stop = first * SPOOL_BLOCK, min(self.size, (last + 1) * SPOOL_BLOCK)
        read = self.file.pread
        data = read(offset, length)
        head = read(start, offset - start) if offset > start else b""
        tail = read(end, stop - end) if stop > end else b""
        mv, crcs, crc32 = memoryview(data), self.crcs, zlib.crc32
        at = 0
        for k in range(first, last + 1):
            upto = min(length, (k + 1) * SPOOL_BLOCK - offset)
            crc = crc32(mv[at:upto], crc32(head) if k == first else 0)
            if k == last:
                crc = crc32(tail, crc)
            if crc != crcs[k]:
                raise SpoolDamaged(f"{self.file.path}: block {k} fails its checksum (the cached copy is damaged)")
            at = upto
        return data

    def close(self) -> None:
        """Close the spool's descriptor."""
        self.file.close()


def _spool(src: Source, fh: BinaryIO, limit: int, room: int | None) -> None:
    """Decompress zstd `src` into a spool file with its block checksums."""
    w = _SpoolWriter(fh)
    try:
        decompress_to(src, "zstd", w, limit, room)  # type: ignore[arg-type]
        w.finish()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoRoom(f"the disk filled up ({e.strerror})") from None
        raise


class ZstdSource(LazySource):
    """A zstd stream decompressed once, on first use, into the cache (reused by later opens).

    Single-frame zstd has no seek points, so the decompressed copy is the random access; without a
    writable cache, or where the cache's disk has no room for it, it goes to a private temporary file
    instead. Disk use is bounded by the cache's size bound, and against bombs by bomb_limit.
    """

    def __init__(self, src: Source, store: Store | None, key: str | None) -> None:
        super().__init__(src)
        self.store = store
        self.key = key
        self._retired: list[Source] = []  # damaged spools a read may still be using: closed with this source

    def _cached(self) -> Source | None:
        assert self.store is not None and self.key is not None
        try:
            fd = self.store.open_fd("zst", self.key, ".tar")
            return None if fd is None else CheckedSpool(fd, str(self.store.path("zst", self.key, ".tar")))
        except CacheDamage:
            self.store.warn_once(f"cache: the decompressed copy of {self.key} is damaged; rebuilding it")
            return None

    def _make(self) -> Source:
        store, key, src = self.store, self.key, self.src
        if store is None or key is None:
            return SpoolSource(src, "zstd")
        hit = self._cached()
        if hit is not None:
            return hit
        limit, room = bomb_limit(src), store.room()
        try:
            written = store.write_with("zst", key, ".tar", lambda fh: _spool(src, fh, limit, room), sealed=False)
        except NoRoom:
            # A small cache disk is no bomb: a private copy in $TMPDIR (refused there only if it is one).
            store.warn_once(f"cache {store.root} has no room for a decompressed zstd layer; "
                            "using a private copy in the temporary folder")
            written = False
        hit = self._cached() if written else None
        return hit if hit is not None else SpoolSource(src, "zstd")

    def pread(self, offset: int, length: int) -> bytes:
        """Read from the copy; a damaged cached copy is dropped from the cache and made again once."""
        try:
            return super().pread(offset, length)
        except SpoolDamaged:
            assert self.store is not None and self.key is not None
            with self._lock:
                if self._inner is not None:
                    self._retired.append(self._inner)
                    self._inner = None
                self.store.remove("zst", self.key, ".tar")
            self.store.warn_once(f"cache: the decompressed copy of {self.key} is damaged; rebuilding it")
            return super().pread(offset, length)

    def close(self) -> None:
        """Close the copy and any damaged one set aside."""
        super().close()
        with self._lock:
            for s in self._retired:
                close_source(s)
            self._retired.clear()


def open_stream(src: Source, store: Store | None = None, key: str | None = None,
                progress: Callable[[int, int], None] | None = None) -> tuple[Source, str | None]:
    """Serve `src` uncompressed at random offsets; also name the compression found (from magic bytes).

    `progress(done, total)` hears of the compressed bytes read by a first pass through a gzip stream.
    """
    head = src.pread(0, min(8, src.size)) if src.size else b""
    kind = sniff_compression(head)
    if kind == "gzip":
        return GzipSource(src, store, key, progress), kind
    if kind == "zstd":
        return ZstdSource(src, store, key), kind
    return src, None
