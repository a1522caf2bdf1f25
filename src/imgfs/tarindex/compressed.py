"""Random access into compressed streams: gzip through persisted seek points, zstd through a cached spool."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import threading
import weakref
from collections.abc import Callable

from ..errors import FormatError, TruncatedError
from .source import FileSource, Source, SpoolSource, decompress_to, sniff_compression
from .store import Store


class _SourceFile(io.RawIOBase):
    """A seekable file object over a Source, for libraries that want one."""

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


_OPEN: weakref.WeakSet[GzipSource] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # rapidgzip aborts the interpreter if its worker threads outlive it: close every file first.
    for g in list(_OPEN):
        g.close()


class GzipSource:
    """A gzip stream (multi-member too) read at random offsets through rapidgzip's seek points.

    The first full pass records a seek point every few MiB; the points are saved in the store, so a later
    open reads a file deep inside the stream by decompressing one span, not the stream from its start.
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
        self.imported = False
        _OPEN.add(self)

    def _open(self):  # -> rapidgzip.RapidgzipFile
        if self._file is None:
            try:
                import rapidgzip
            except ImportError:  # pragma: no cover - a declared dependency
                raise FormatError("gzip data needs the 'rapidgzip' package") from None
            self._file = rapidgzip.RapidgzipFile(_SourceFile(self.src, self.progress),
                                                 parallelization=os.cpu_count() or 1)
            if self.store is not None and self.key is not None:
                data = self.store.read("gz", self.key, ".gzi")
                if data is not None:
                    try:
                        self._file.import_index(io.BytesIO(data))
                        self.imported = True
                    except Exception:  # noqa: BLE001 - any failure means: rebuild the points
                        self.store.warn_once(f"cache: seek points for {self.key} unreadable; rebuilding them")
                        self._file = rapidgzip.RapidgzipFile(_SourceFile(self.src),
                                                             parallelization=os.cpu_count() or 1)
        return self._file

    @property
    def size(self) -> int:  # type: ignore[override]
        """The uncompressed size (the first call reads the whole stream and records seek points)."""
        if self._size is None:
            with self._lock:
                if self._size is None:
                    f = self._open()
                    try:
                        f.seek(0, 2)
                        self._size = f.tell()
                    except Exception as e:  # noqa: BLE001 - rapidgzip raises plain exceptions on bad data
                        raise FormatError(f"corrupt or truncated gzip data: {e}") from None
                    self._save_points()
        return self._size

    def _save_points(self) -> None:
        if self.imported or self.store is None or self.key is None or self._file is None:
            return
        f = self._file
        self.store.write_with("gz", self.key, ".gzi", lambda fh: f.export_index(fh))
        self.imported = True

    def pread(self, offset: int, length: int) -> bytes:
        """Read `length` uncompressed bytes at `offset`."""
        with self._lock:
            f = self._open()
            try:
                f.seek(offset)
                data = f.read(length)
            except Exception as e:  # noqa: BLE001
                raise FormatError(f"corrupt or truncated gzip data: {e}") from None
        if len(data) != length:
            raise TruncatedError(f"gzip stream ends before offset {offset + length}")
        return data

    def close(self) -> None:
        """Release the decompressor."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __del__(self) -> None:
        if self._file is not None:
            self._file.close()


class ZstdSource:
    """A zstd stream decompressed once, on first use, into the cache (reused by later opens).

    Single-frame zstd has no seek points, so the decompressed copy is the random access; without a
    writable cache it goes to a private temporary file instead. Disk use is bounded by the cache's size
    bound and, against bombs, by the free space of its filesystem.
    """

    def __init__(self, src: Source, store: Store | None, key: str | None) -> None:
        self.src = src
        self.store = store
        self.key = key
        self._lock = threading.Lock()
        self._inner: Source | None = None

    def _open(self) -> Source:
        with self._lock:
            if self._inner is None:
                self._inner = self._make()
            return self._inner

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
        limit = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            limit = int(shutil.disk_usage(path.parent).free * 0.8)
        except OSError:
            pass
        src = self.src
        written = self.store.write_with("zst", self.key, ".tar", lambda fh: decompress_to(src, "zstd", fh, limit))
        return SpoolSource(src, "zstd") if written is None else FileSource(written)

    @property
    def size(self) -> int:  # type: ignore[override]
        """The uncompressed size (decompresses on the first call)."""
        return self._open().size

    def pread(self, offset: int, length: int) -> bytes:
        """Read from the decompressed copy."""
        return self._open().pread(offset, length)

    def close(self) -> None:
        """Close the decompressed copy (the cached file stays)."""
        with self._lock:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
            self._inner = None


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
