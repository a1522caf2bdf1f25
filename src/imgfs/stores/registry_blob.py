"""One registry blob as a Source: range requests through a block cache, or one verified download.

Reads in the middle of a blob (tar headers of an uncompressed layer, a span of a gzip layer from its
seek point) are range requests of whole blocks, kept in the cache (or in memory with --no-cache). A full
pass over a compressed blob (making gzip seek points, a zstd copy) downloads it once into a private
temporary file while hashing it: nothing derived from a blob is kept before its digest is checked.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import BinaryIO, Protocol

from ..errors import FormatError, TruncatedError
from ..tarindex import FileSource
from ..tarindex.source import GZIP_MAGIC, ZSTD_MAGIC
from ..tarindex.store import Store
from .http import Response

BLOCK = 512 << 10  # the unit of range requests and of the range cache
MEMORY_BLOCKS = 128  # blocks kept in memory (64 MiB), the only copy with --no-cache
HEAD = 64  # the first bytes of a compressed blob, fetched and cached apart (its magic is all that is read)
MAX_AHEAD = 32  # blocks (16 MiB): the longest read-ahead of a sequential reader
FULL_PASS = 1 << 20  # a read this long from the start of a compressed blob is a decompressor's first pass
# A compressed blob this small is kept whole in the range cache after its pass (its pass is made again
# from there, a zlib pass over a few MiB); a larger gzip blob gets seek points and is read by ranges later.
KEEP_WHOLE = 8 << 20
WHOLE_IF_RANGE_IGNORED = 64 << 20  # a server that ignores Range is put up with for blobs this small
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Fetcher(Protocol):
    """What a blob needs of its registry: authenticated GETs of its blob URL."""

    def blob_get(self, digest: str, headers: dict[str, str], limit: int,
                 sink: Callable[[bytes], None] | None = None) -> Response:
        """GET /v2/<repo>/blobs/<digest> with auth and retries."""
        ...


class BlockCache:
    """Fetched blocks by key: a small LRU in memory, and the size-bounded disk cache when there is one."""

    def __init__(self, store: Store | None) -> None:
        self.store = store
        self._mem: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        """A cached block, or None."""
        with self._lock:
            data = self._mem.get(key)
            if data is not None:
                self._mem.move_to_end(key)
                return data
        data = self.store.read("rng", key, ".blk") if self.store is not None else None
        if data is not None:
            self._remember(key, data)
        return data

    def put(self, key: str, data: bytes) -> None:
        """Keep a block."""
        self._remember(key, data)
        if self.store is not None:
            self.store.write("rng", key, ".blk", data)

    def _remember(self, key: str, data: bytes) -> None:
        with self._lock:
            self._mem[key] = data
            while len(self._mem) > MEMORY_BLOCKS:
                self._mem.popitem(last=False)


class _Spool:
    """The sink of a verified download: a temporary file and a running hash, both restarted on a retry."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self.fh, self.limit = fh, limit
        self.reset()

    def reset(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.hash = hashlib.sha256()
        self.size = 0

    def __call__(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.limit:
            raise FormatError(f"the blob is longer than its descriptor ({self.limit} bytes)")
        self.fh.write(chunk)
        self.hash.update(chunk)
        self.size += len(chunk)


_OPEN: weakref.WeakSet[RegistryBlob] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # Downloaded copies are private temporary files: none is left behind by a process that forgot to close.
    for b in list(_OPEN):
        b.close()


class RegistryBlob:
    """A blob of `size` bytes named by `digest`; `compression` is what its media type says it holds."""

    window = 1 << 20  # a header scan reads ahead this much per request: small files cost no request each

    def __init__(self, fetcher: Fetcher, digest: str, size: int, compression: str | None, cache: BlockCache,
                 cache_key: str, where: str) -> None:
        self.fetcher, self.digest, self.size, self.compression = fetcher, digest, size, compression
        self.cache, self.cache_key, self.where = cache, cache_key, where
        self._local: FileSource | None = None
        self._path: str | None = None
        self._lock = threading.Lock()
        self.downloaded = 0  # bytes this blob fetched from the network
        self._next, self._ahead = -1, 1  # where a sequential reader goes on, and how far ahead to fetch
        _OPEN.add(self)

    def pread(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`: from the downloaded copy, else by range requests."""
        if offset < 0 or offset + length > self.size:
            raise TruncatedError(f"read of {length} bytes at {offset} past the end of a {self.size}-byte blob")
        if length == 0:
            return b""
        if self._local is None and self.compression and offset == 0 and length >= min(FULL_PASS, self.size):
            self.download()
        local = self._local
        if local is not None:
            return local.pread(offset, length)
        if offset == 0 and length <= HEAD and self.compression:
            return self._head()[:length]
        first, last = offset // BLOCK, (offset + length - 1) // BLOCK
        blocks: dict[int, bytes] = {}
        missing: list[int] = []
        for b in range(first, last + 1):
            data = self.cache.get(f"{self.cache_key}#{b}")
            if data is None:
                missing.append(b)
            else:
                blocks[b] = data
        for start, end in _runs(missing):
            blocks.update(self._fetch(start, self._read_ahead(start, end)))
        data = b"".join(blocks[b] for b in range(first, last + 1))
        skip = offset - first * BLOCK
        return data[skip:skip + length]

    def _read_ahead(self, start: int, end: int) -> int:
        """The last block to fetch: further than asked when reads go on where the last fetch ended.

        A file read from start to end (cp, cat) then costs a few large requests, not one per 128 KiB read;
        the run doubles up to MAX_AHEAD blocks and never covers a block already cached.
        """
        with self._lock:
            if start == self._next:
                self._ahead = min(self._ahead * 2, MAX_AHEAD)
            else:
                self._ahead = 1
            last = min(max(end, start + self._ahead - 1), (self.size - 1) // BLOCK)
            self._next = last + 1
        for b in range(end + 1, last + 1):
            if self.cache.get(f"{self.cache_key}#{b}") is not None:
                return b - 1
        return last

    def _head(self) -> bytes:
        """The first bytes of a compressed blob (its magic is sniffed before any pass): one small request."""
        key = f"{self.cache_key}#head"
        data = self.cache.get(key)
        if data is None:
            n = min(HEAD, self.size)
            resp = self.fetcher.blob_get(self.digest, {"Range": f"bytes=0-{n - 1}"}, limit=WHOLE_IF_RANGE_IGNORED)
            if resp.status not in (200, 206) or len(resp.body) < n:
                raise TruncatedError(f"{self.where}: the blob is shorter than its descriptor ({self.size} bytes)")
            data = resp.body[:n]
            self.downloaded += len(resp.body)
            self._check_magic(data)
            self.cache.put(key, data)
        return data

    def _fetch(self, first: int, last: int) -> dict[int, bytes]:
        """Blocks first..last in one range request, checked and cached."""
        start, end = first * BLOCK, min((last + 1) * BLOCK, self.size)
        resp = self.fetcher.blob_get(self.digest, {"Range": f"bytes={start}-{end - 1}"},
                                     limit=max(end - start, WHOLE_IF_RANGE_IGNORED) + 1)
        body = resp.body
        if resp.status == 206:
            m = _RANGE.fullmatch((resp.header("Content-Range") or "").strip())
            if m is None or int(m.group(1)) != start:
                raise FormatError(f"{self.where}: the registry answered another range than asked for")
        elif resp.status == 200:  # Range ignored: the whole blob came; it must be the size the manifest says
            if len(body) != self.size:
                raise TruncatedError(f"{self.where}: the registry sent {len(body)} bytes, the manifest says "
                                     f"{self.size}")
            body = body[start:end]
        elif resp.status == 416:
            raise TruncatedError(f"{self.where}: the blob is shorter than its descriptor ({self.size} bytes)")
        else:
            raise FormatError(f"{self.where}: HTTP {resp.status} for a range of the blob")
        if len(body) != end - start:
            raise TruncatedError(f"{self.where}: the blob is shorter than its descriptor ({self.size} bytes)")
        self.downloaded += len(resp.body)
        if first == 0 and self.compression:
            self._check_magic(body)
        out = {}
        for b in range(first, last + 1):
            out[b] = body[(b - first) * BLOCK:(b - first + 1) * BLOCK]
            self.cache.put(f"{self.cache_key}#{b}", out[b])
        return out

    def _check_magic(self, head: bytes) -> None:
        # Indexes of compressed blobs are shared by digest: the bytes must be what the media type says.
        magic = GZIP_MAGIC if self.compression == "gzip" else ZSTD_MAGIC
        if not head.startswith(magic):
            raise FormatError(f"{self.where}: the blob is not {self.compression} data as its media type says")

    def download(self) -> str:
        """Fetch the whole blob once into a private temporary file, checking size and digest; its path."""
        with self._lock:
            if self._path is not None:
                return self._path
            fd, path = tempfile.mkstemp(prefix="imgfs-blob-")
            try:
                with os.fdopen(fd, "w+b") as fh:
                    spool = _Spool(fh, self.size)
                    cached = self._cached_whole()
                    if cached is not None:
                        spool(cached)
                    else:
                        resp = self.fetcher.blob_get(self.digest, {}, limit=self.size, sink=spool)
                        if resp.status != 200:
                            raise FormatError(f"{self.where}: HTTP {resp.status} for the blob")
                        self.downloaded += spool.size
                if spool.size != self.size:
                    raise TruncatedError(f"{self.where}: the registry sent {spool.size} bytes, the manifest says "
                                         f"{self.size}")
                if "sha256:" + spool.hash.hexdigest() != self.digest:
                    raise FormatError(f"{self.where}: the blob's bytes do not match its digest")
                with open(path, "rb") as fh:
                    if self.compression:
                        self._check_magic(fh.read(8))
                    if cached is None and self.size <= KEEP_WHOLE:
                        fh.seek(0)
                        for b in range((self.size + BLOCK - 1) // BLOCK):
                            self.cache.put(f"{self.cache_key}#{b}", fh.read(BLOCK))
                self._local = FileSource(path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            self._path = path
            return path

    def _cached_whole(self) -> bytes | None:
        """A small blob whole from the range cache (a later pass over it then costs no download), or None."""
        if self.size > KEEP_WHOLE:
            return None
        parts = []
        for b in range((self.size + BLOCK - 1) // BLOCK):
            data = self.cache.get(f"{self.cache_key}#{b}")
            if data is None:
                return None
            parts.append(data)
        return b"".join(parts)

    def pass_file(self) -> tuple[FileSource, int]:
        """A local file holding these very bytes, downloaded once and verified: for a pass run in a child."""
        self.download()
        assert self._local is not None
        return self._local, 0

    def close(self) -> None:
        """Drop the downloaded copy, if any."""
        with self._lock:
            if self._local is not None:
                self._local.close()
                self._local = None
            if self._path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._path)
                self._path = None


    def __del__(self) -> None:
        # A blob dropped without close() (an archive never closed) still removes its private copy.
        path = getattr(self, "_path", None)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    """Consecutive numbers as (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for b in blocks:
        if runs and runs[-1][1] == b - 1:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs
