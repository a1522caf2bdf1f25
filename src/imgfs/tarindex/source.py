"""Byte sources: random access (`pread`) to a file, a slice of it, or a decompressed stream."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from ..errors import FormatError, TruncatedError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


class Source(Protocol):
    """Anything that serves `size` bytes at random offsets."""

    size: int

    def pread(self, offset: int, length: int) -> bytes:
        """Return exactly `length` bytes at `offset`, or raise TruncatedError."""
        ...


class FileSource:
    """A whole file on disk, read with os.pread (thread-safe, no shared file position)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise FormatError(f"{self.path}: cannot open: {e.strerror}") from None
        st = os.fstat(self.fd)
        self.size = st.st_size
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def pread(self, offset: int, length: int) -> bytes:
        """Return `length` bytes at `offset`; a short read means the file shrank."""
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


class SliceSource:
    """A window [base, base+size) of another source: offsets compose through nesting."""

    def __init__(self, parent: Source, base: int, size: int) -> None:
        self.parent = parent
        self.base = base
        self.size = size

    def pread(self, offset: int, length: int) -> bytes:
        """Read inside the window; reading past its end is a truncation."""
        if offset < 0 or offset + length > self.size:
            raise TruncatedError(f"read of {length} bytes at {offset} past the end of a {self.size}-byte member")
        return self.parent.pread(self.base + offset, length)


def sniff_compression(head: bytes) -> str | None:
    """Name the compression of a stream from its first bytes: 'gzip', 'zstd' or None."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head[:4] == ZSTD_MAGIC:
        return "zstd"
    if head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        raise FormatError("bzip2/xz compressed data is not supported (only gzip and zstd)")
    return None


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


def decompress_to(src: Source, kind: str, out: BinaryIO, limit: int | None = None) -> int:
    """Decompress all of `src` (gzip, multi-member too, or zstd) into `out`; return the size."""
    total = 0
    reader = _SourceReader(src)
    if kind == "gzip":
        new: Callable[[], Any] = lambda: zlib.decompressobj(31)  # noqa: E731
        error: type[Exception] = zlib.error
    elif kind == "zstd":
        try:
            import zstandard
        except ImportError:  # pragma: no cover - a declared dependency
            raise FormatError("zstd data needs the 'zstandard' package") from None
        dctx = zstandard.ZstdDecompressor()
        new, error = dctx.decompressobj, zstandard.ZstdError
    else:
        raise FormatError(f"unknown compression {kind!r}")
    d = new()
    started = False  # bytes of the current gzip member / zstd frame have been fed
    while True:
        chunk = reader.read(_CHUNK)
        if not chunk:
            break
        while chunk:
            if not started:
                # Between members: zero padding (block devices, some tools) is skipped, as gzip(1) does.
                chunk = chunk.lstrip(b"\x00")
                if not chunk:
                    break
            try:
                data = d.decompress(chunk)
            except error as e:
                raise FormatError(f"corrupt {kind} data: {e}") from None
            started = True
            total += len(data)
            out.write(data)
            if limit is not None and total > limit:
                raise FormatError(f"decompresses to more than {limit} bytes (a decompression bomb, or the disk "
                                  "is nearly full): refused")
            chunk = b""
            if d.eof:
                # pigz and `cat a.gz b.gz` give several members, zstd several frames: go on with the next.
                chunk = d.unused_data
                d = new()
                started = False
    if started:
        raise TruncatedError(f"{kind} stream ends early (truncated)")
    return total


BOMB_FLOOR = 4 << 30  # a stream may always decompress to this much
BOMB_RATIO = 256  # beyond the floor, to at most this many times its compressed size


def spool_limit(src: Source, where: str | None) -> int:
    """How far a decompressed copy of `src` may grow: bombs stop here, as does a filling disk."""
    limit = max(BOMB_FLOOR, BOMB_RATIO * src.size)
    with contextlib.suppress(OSError):
        import shutil  # here, as below: only spooling needs them, and they cost start-up time
        import tempfile

        limit = min(limit, int(shutil.disk_usage(where or tempfile.gettempdir()).free * 0.8))
    return limit


class LazySource:
    """A source made on first use (a decompressed copy): size and reads go to it; subclasses say how."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inner: Source | None = None

    def _make(self) -> Source:
        raise NotImplementedError

    def _open(self) -> Source:
        with self._lock:
            if self._inner is None:
                self._inner = self._make()
            return self._inner

    @property
    def size(self) -> int:  # type: ignore[override]
        """The size of the copy (made on the first call)."""
        return self._open().size

    def pread(self, offset: int, length: int) -> bytes:
        """Read from the copy (made on the first call)."""
        return self._open().pread(offset, length)

    def close(self) -> None:
        """Close the copy (a private one is gone then; a cached one stays on disk)."""
        with self._lock:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
            self._inner = None


class SpoolSource(LazySource):
    """A compressed source decompressed once, on first use, into a private temporary file."""

    def __init__(self, src: Source, kind: str, spool_dir: str | None = None) -> None:
        super().__init__()
        self.src = src
        self.kind = kind
        self.spool_dir = spool_dir

    def _make(self) -> Source:
        import tempfile

        fd, path = tempfile.mkstemp(prefix="imgfs-spool-", dir=self.spool_dir)
        try:
            with os.fdopen(os.dup(fd), "wb", buffering=_CHUNK) as out:
                decompress_to(self.src, self.kind, out, spool_limit(self.src, self.spool_dir))
            return FileSource(path)
        finally:
            os.close(fd)
            os.unlink(path)  # the open descriptor keeps the data; nothing is left behind


def open_maybe_compressed(src: Source, spool_dir: str | None = None) -> tuple[Source, str | None]:
    """Wrap `src` so that it serves uncompressed bytes; also return the compression found."""
    head = src.pread(0, min(8, src.size)) if src.size else b""
    kind = sniff_compression(head)
    if kind is None:
        return src, None
    return SpoolSource(src, kind, spool_dir), kind
