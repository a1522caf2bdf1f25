"""Random access into compressed streams: gzip through persisted seek points, zstd through a cached spool."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import sys
import threading
import weakref
from collections.abc import Callable

from ..errors import FormatError, TruncatedError
from .source import (
    FileSource,
    LazySource,
    SliceSource,
    Source,
    SourceFile,
    SpoolSource,
    decompress_to,
    sniff_compression,
    spool_limit,
)
from .store import Store

_OPEN: weakref.WeakSet[GzipSource] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # rapidgzip aborts the interpreter if its worker threads outlive it: close every file first.
    for g in list(_OPEN):
        g.close()


SMALL_GZIP = 8 << 20  # below this, one zlib pass into a temporary file beats a child process and seek points


class GzipSource:
    """A gzip stream (multi-member too) read at random offsets through rapidgzip's seek points.

    The first full pass records a seek point every few MiB; the points are saved in the store, so a later
    open reads a file deep inside the stream by decompressing one span, not the stream from its start.
    That first pass runs in a child process (see gzpass.py). Small streams, streams rapidgzip refuses (zero
    padding after the last member, damage) and streams that are not a window of a file fall back to a
    one-time zlib decompression into a private temporary file, which tolerates padding and names the damage.
    rapidgzip's threads do not survive fork(): a process that forks must open its archives after the fork.
    """

    window = 4 << 20  # scan in big windows: each window costs a seek into the stream

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

    def _file_window(self) -> tuple[str, int, int] | None:
        local = getattr(self.src, "local_window", None)
        if local is not None:  # a remote blob: one verified download, then the pass reads that file
            return local()
        s: Source = self.src
        base = 0
        while isinstance(s, SliceSource):
            base += s.base
            s = s.parent
        return (s.path, base, self.src.size) if isinstance(s, FileSource) else None

    def _rapidgzip(self, points: bytes):  # -> rapidgzip.RapidgzipFile with the seek points loaded
        try:
            import rapidgzip
        except ImportError:  # pragma: no cover - a declared dependency
            raise FormatError("gzip data needs the 'rapidgzip' package") from None
        f = rapidgzip.RapidgzipFile(SourceFile(self.src), parallelization=os.cpu_count() or 1)
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
        meta = self.store.read("gz", self.key, ".gzi") if self.store and self.key else None
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
        window = self._file_window() if self.src.size >= SMALL_GZIP else None
        made = self._first_pass(window) if window is not None else None
        if made is None:
            self._fallback = SpoolSource(self.src, "gzip")
            return
        size, points = made
        self._file = self._rapidgzip(points)
        self._size = size
        if self.store is not None and self.key is not None:
            self.store.write("gz", self.key, ".gzi", b"%016d" % size + points)

    def _first_pass(self, window: tuple[str, int, int]) -> tuple[int, bytes] | None:
        """Run gzpass in a child; (size, seek points), or None when the stream needs the slow path."""
        path, base, length = window
        import subprocess  # here: only a first pass needs them (start-up time)
        import tempfile

        fd, out = tempfile.mkstemp(prefix="imgfs-gzi-")
        os.close(fd)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "imgfs.tarindex.gzpass", path, str(base), str(length), out],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
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
                self.src.pread(self.src.size - 1, 1)
                f = self._file
                try:
                    f.seek(offset)
                    data = f.read(length)
                except Exception as e:  # noqa: BLE001
                    raise FormatError(f"corrupt or truncated gzip data: {e}") from None
        if fallback is not None:
            return fallback.pread(offset, length)
        if len(data) != length:
            raise TruncatedError(f"gzip stream ends before offset {offset + length}")
        return data

    def close(self) -> None:
        """Release the decompressor (or the temporary copy)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._size = self._points = None  # a later use starts again from the cached seek points
            close = getattr(self._fallback, "close", None)
            if close is not None:
                close()

    def __del__(self) -> None:
        if self._file is not None:
            self._file.close()


class ZstdSource(LazySource):
    """A zstd stream decompressed once, on first use, into the cache (reused by later opens).

    Single-frame zstd has no seek points, so the decompressed copy is the random access; without a
    writable cache it goes to a private temporary file instead. Disk use is bounded by the cache's size
    bound and, against bombs, by the free space of its filesystem.
    """

    def __init__(self, src: Source, store: Store | None, key: str | None) -> None:
        super().__init__()
        self.src = src
        self.store = store
        self.key = key

    def _make(self) -> Source:
        if self.store is None or self.key is None:
            return SpoolSource(self.src, "zstd")
        path = self.store.path("zst", self.key, ".tar")
        if path.exists():
            try:
                os.utime(path)
                return FileSource(path)
            except (OSError, FormatError):
                pass
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
        limit = spool_limit(self.src, str(path.parent))
        src = self.src
        written = self.store.write_with("zst", self.key, ".tar", lambda fh: decompress_to(src, "zstd", fh, limit))
        return SpoolSource(src, "zstd") if written is None else FileSource(written)


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
