"""An image tar read in one pass from a pipe (`docker save app | imgfs find - ...`), without seeking.

The outer tar and every layer inside it are read by the same scanner as files are (tarindex.scan), over a
source that only goes forwards. Each layer blob is indexed as it streams by: Docker >= 25 writes
manifest.json after the blobs, so which blob is which layer is only decided at the end, from the
documents. What is kept: the small documents (manifests, configs, attestations) and the bytes of the
members whose path the caller asked for (`keep`), all in one temporary file with a size bound; the
rest is read once and dropped, so memory stays flat whatever the size of the image. A read of bytes
that were not kept (a link whose target is elsewhere) is an error that says so, never other bytes.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import IO, Any

from .archive import Archive
from .errors import FormatError, ImgfsError, TruncatedError
from .stores.base import MAX_JSON
from .stores.tarball import TarballStore
from .tarindex import MemberIndex, Source, scan
from .tarindex.reader import BLOCK, FILE, HARDLINK, MAX_META, SYMLINK, normalize
from .tarindex.source import BOMB_FLOOR, BOMB_RATIO, decompress_to, sniff_compression

CHUNK = 1 << 20
SPOOL_MAX = 16 << 30  # what may be kept of one pipe, further bounded by the free space of the temporary directory
UNKNOWN = 1 << 62  # the size of a stream read to its end
MAX_KEPT_PATHS = 4096  # paths kept, links followed included (a hostile chain of links ends here)
KEEP_BACK = 2 * MAX_META + 8 * BLOCK  # how far back the scanner may read again (headers of one entry)
NOT_KEPT = ("its bytes went by in the pipe without being kept (through a pipe, only the paths named on "
            "the command line are kept, not what links elsewhere lead to): save the archive to a file first")


class Spool:
    """One temporary file the kept bytes are appended to, bounded in size; gone when closed."""

    def __init__(self, limit: int | None = None, where: str | None = None) -> None:
        fd, path = tempfile.mkstemp(prefix="imgfs-pipe-", dir=where)
        os.unlink(path)  # the descriptor keeps the data; nothing is left behind, even after a crash
        self.fd = fd
        self.size = 0
        free = SPOOL_MAX
        with contextlib.suppress(OSError):
            free = int(shutil.disk_usage(where or tempfile.gettempdir()).free * 0.8)
        self.limit = min(SPOOL_MAX, free) if limit is None else limit

    def append(self, data: bytes) -> int:
        """Write `data` at the end; return where it starts. ImgfsError past the bound."""
        at = self.size
        if at + len(data) > self.limit:
            raise ImgfsError(f"through a pipe, the members kept passed {self.limit} bytes (the bound of the "
                             "temporary file): save the archive to a file first")
        view = memoryview(data)
        while view:
            view = view[os.pwrite(self.fd, view, at + len(data) - len(view)):]
        self.size += len(data)
        return at

    def pread(self, offset: int, length: int) -> bytes:
        """Bytes written before."""
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        """Drop the file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Kept:
    """A stream of which only some ranges were kept (in the spool): they read as they were, the rest is an error."""

    def __init__(self, spool: Spool, what: str) -> None:
        self.spool = spool
        self.what = what
        self.starts: list[int] = []  # stream offsets of the kept extents, ascending
        self.extents: list[tuple[int, int, int]] = []  # (stream offset, spool offset, length)
        self.size = 0  # set when the stream has been read to its end

    def add(self, offset: int, data: bytes) -> None:
        """Keep `data`, found at `offset` of the stream (offsets only grow)."""
        at = self.spool.append(data)
        if self.extents:
            s, p, n = self.extents[-1]
            if s + n == offset and p + n == at:  # contiguous in both: one extent
                self.extents[-1] = (s, p, n + len(data))
                return
        self.starts.append(offset)
        self.extents.append((offset, at, len(data)))

    def pread(self, offset: int, length: int) -> bytes:
        """Kept bytes; FormatError for bytes the pass did not keep."""
        if length == 0:
            return b""
        k = bisect.bisect_right(self.starts, offset) - 1
        if k >= 0:
            s, p, n = self.extents[k]
            if offset + length <= s + n:
                return self.spool.pread(p + offset - s, length)
        if offset + length > self.size:
            raise TruncatedError(f"{self.what}: read of {length} bytes at {offset} past its end ({self.size})")
        raise FormatError(f"{self.what}: {NOT_KEPT}")


class Forward:
    """A stream read only forwards, as a Source for the scanner.

    The scanner reads a header, hears of its member (on_member) and reads the next header further on: the
    bytes in between are that member's data, handed to `sink` when one is set, else dropped. Headers read
    since the last skip stay readable again (the scanner hashes them), at most KEEP_BACK bytes.
    """

    window = BLOCK  # one header a read: the scanner must never ask for bytes past the next header

    def __init__(self, read: Callable[[int], bytes], size: int = UNKNOWN, what: str = "the pipe") -> None:
        self._read = read
        self.size = size
        self.what = what
        self.pos = 0
        self.back = bytearray()
        self.back_off = 0
        self.sink: Callable[[int, bytes], None] | None = None

    def take(self, n: int) -> bytes:
        """Up to `n` bytes from where the stream stands (fewer only at its end), not kept."""
        parts, got = [], 0
        while got < n:
            data = self._read(min(n - got, CHUNK))
            if not data:
                break
            parts.append(data)
            got += len(data)
        self.pos += got
        return b"".join(parts)

    def skip_to(self, offset: int) -> None:
        """Go forward to `offset`, handing what lies before it to the sink; the sink is done then."""
        while self.pos < offset:
            data = self._read(min(offset - self.pos, CHUNK))
            if not data:
                raise TruncatedError(f"{self.what} ends at offset {self.pos}, before {offset}")
            if self.sink is not None:
                self.sink(self.pos, data)
            self.pos += len(data)
        self.sink = None
        self.back.clear()
        self.back_off = self.pos

    def drain(self) -> None:
        """Read the stream to its end (a writer on the other side of a pipe must not be left blocked)."""
        self.sink = None
        while self.take(CHUNK):
            pass

    def pread(self, offset: int, length: int) -> bytes:
        """Bytes at `offset`: ahead of the stream, or among the headers read since the last skip."""
        if offset < self.back_off:
            raise FormatError(f"{self.what}: cannot go back to offset {offset} (a pipe is read once)")
        if offset > self.pos:
            self.skip_to(offset)
        end = offset + length
        if end > self.pos:
            need = end - self.pos
            data = self.take(need)
            if len(data) < need:
                raise TruncatedError(f"{self.what} ends at offset {self.pos}, inside a tar header or record")
            self.back += data
            if len(self.back) > KEEP_BACK:
                cut = len(self.back) - KEEP_BACK
                del self.back[:cut]
                self.back_off += cut
        return bytes(self.back[offset - self.back_off:end - self.back_off])


class _Ahead:
    """The rest of a stream as a Source for decompress_to: reads in order, fewer bytes only at the end."""

    def __init__(self, head: bytes, rest: Callable[[int], bytes], size: int) -> None:
        self.head, self.rest, self.size, self.pos = head, rest, size, 0

    def pread(self, offset: int, length: int) -> bytes:
        # decompress_to reads in order; it advances by what it asked for, so `offset` is not checked.
        data = self.head[:length]
        self.head = self.head[length:]
        if len(data) < length:
            data += self.rest(length - len(data))
        self.pos += len(data)
        return data


class _Decompressing:
    """A compressed stream decompressed by a thread into an OS pipe, read back by a Forward source.

    decompress_to pushes what it makes into a file; the scanner pulls. A pipe between the two keeps
    memory flat, and lets both be the code that reads files (gzip members, zstd frames, bombs refused).
    """

    def __init__(self, src: _Ahead, kind: str, what: str) -> None:
        self.error: BaseException | None = None
        r, w = os.pipe()
        self.r = r

        def run() -> None:
            try:
                with open(w, "wb") as out:
                    # Nothing is stored, so a bomb only costs time; a blob of known size still has a bound.
                    bound = None if src.size == UNKNOWN else max(BOMB_FLOOR, BOMB_RATIO * src.size)
                    decompress_to(src, kind, out, bound)
            except BrokenPipeError:
                pass  # the reader stopped early: it knows why
            except BaseException as e:  # noqa: BLE001 - handed to the reader, which raises it
                self.error = e

        self.thread = threading.Thread(target=run, name="imgfs-pipe-decompress", daemon=True)
        self.thread.start()
        self.forward = Forward(lambda n: os.read(r, n), what=what)

    def abandon(self) -> None:
        """Stop reading: the thread's next write fails, and it ends."""
        os.close(self.r)
        self.thread.join()

    def finish(self) -> None:
        """Drain the decompressed stream, wait for the thread, and raise what went wrong in it."""
        try:
            self.forward.drain()
        finally:
            os.close(self.r)
            self.thread.join()
        if self.error is not None:
            if isinstance(self.error, ImgfsError):
                raise self.error
            raise FormatError(f"{self.forward.what}: {self.error}")


class _Stream:
    """A tar stream arriving in order, plain or compressed, as the scanner reads it: to its end, whatever happens."""

    def __init__(self, head: bytes, rest: Callable[[int], bytes], size: int, compression: str | None,
                 what: str) -> None:
        self.dec = None if compression is None else _Decompressing(_Ahead(head, rest, size), compression, what)
        self.forward = Forward(_prepend(head, rest), size=size, what=what) if self.dec is None else self.dec.forward

    def scan(self, on_member: Callable[[bytes, int, int, int, bytes | None], None]) -> MemberIndex:
        """Index the stream, handing each member to `on_member` as it passes; then read what is left.

        When the pass stops (the spool's bound), nothing more is read: a decompressing thread ends when
        its pipe closes.
        """
        try:
            idx = scan(self.forward, on_member=on_member)
        except BaseException:
            if self.dec is not None:
                self.dec.abandon()
            raise
        if self.dec is not None:
            self.dec.finish()
        else:
            self.forward.drain()
        return idx


def _looks_like_json(head: bytes) -> bool:
    return head.lstrip(b" \t\r\n\xef\xbb\xbf")[:1] in (b"{", b"[")


class _Layer:
    """What the pass made of one blob that is a tar: its index, its kept bytes, its compression, or an error."""

    def __init__(self, kept: Kept, compression: str | None) -> None:
        self.kept, self.compression = kept, compression
        self.index: MemberIndex | None = None
        self.error: ImgfsError | None = None


class Pass:
    """The one pass: outer tar, layers inside it, the kept bytes; what the store and the archive are made of."""

    def __init__(self, read: Callable[[int], bytes], name: str, keep: Iterable[str] = (), subtrees: bool = False,
                 spool_limit: int | None = None) -> None:
        self.name = name
        self.spool = Spool(spool_limit)
        self.keep = {k for k in (normalize(p.encode("utf-8", "surrogateescape")) for p in keep) if k is not None}
        self.subtrees = subtrees
        self.layers: dict[int, _Layer] = {}  # by the blob's data offset in the outer stream
        self.outer_kept = Kept(self.spool, name)
        try:
            self.index = self._outer(read)
        except BaseException:
            self.spool.close()
            raise

    def _wanted(self, name: bytes) -> bool:
        if name in self.keep:
            return True
        if self.subtrees:
            return b"" in self.keep or any(name.startswith(k + b"/") for k in self.keep)
        return False

    def _outer(self, read: Callable[[int], bytes]) -> MemberIndex:
        raw = Forward(read, what=self.name)
        head = raw.take(8)
        if not head:
            raise FormatError("is empty: nothing came through the pipe")
        kind = self.compression = sniff_compression(head)
        stream = _Stream(head, raw.take, UNKNOWN, kind, self.name)  # docker save | gzip: decompressed on its way
        self.outer = stream.forward
        index = stream.scan(self._blob)
        self.outer_kept.size = self.outer.pos
        return index

    def _follow(self, name: bytes, kind: int, link: bytes) -> None:
        """A link at (or above) a kept path: keep where it leads too, for the rest of the pass.

        That helps only where the target is still to come (later in this layer, or in a layer further on);
        a target that went by is the read error NOT_KEPT says.
        """
        if kind == HARDLINK:  # it names the member whose bytes it shares, from the layer's root
            targets = [normalize(link)] if self._wanted(name) else []
        elif self.subtrees:  # extract writes symlinks as they are: nothing more to keep
            targets = []
        else:
            base = b"" if link.startswith(b"/") else name.rpartition(b"/")[0]
            targets = [normalize((base + b"/" if base else b"") + link + k[len(name):])
                       for k in self.keep if k == name or k.startswith(name + b"/")]
        for target in targets:
            if target is not None and len(self.keep) < MAX_KEPT_PATHS:
                self.keep.add(target)

    def _blob(self, name: bytes, kind: int, offset: int, size: int, link: bytes | None) -> None:
        """An outer member: index it as a layer if it is a tar, keep it if it is a document."""
        if kind != FILE or size == 0:
            return
        outer = self.outer
        head = outer.pread(offset, min(size, BLOCK))
        compression = sniff_compression(head[:8]) if len(head) >= 8 else None
        if _looks_like_json(head) or (compression is None and size < 2 * BLOCK):
            if size <= MAX_JSON:
                outer.sink = self.outer_kept.add  # a document: it is read at the end
                self.outer_kept.add(offset, head)
                outer.skip_to(offset + size)
            return
        layer = _Layer(Kept(self.spool, os.fsdecode(name)), compression)
        self.layers[offset] = layer
        stream = _Stream(head, _Bounded(outer, size - len(head)), size, compression, os.fsdecode(name))
        inner = stream.forward

        def member(inner_name: bytes, inner_kind: int, inner_offset: int, inner_size: int,
                   inner_link: bytes | None) -> None:
            if inner_kind == FILE and inner_size and self._wanted(inner_name):
                inner.sink = layer.kept.add
            elif inner_link is not None and inner_kind in (SYMLINK, HARDLINK):
                self._follow(inner_name, inner_kind, inner_link)

        try:
            idx = stream.scan(member)
            layer.kept.size = inner.pos
            if idx.error and not len(idx):
                raise FormatError(idx.error)
            layer.index = idx
        except ImgfsError as e:
            if isinstance(e, FormatError):
                layer.error = e
            else:
                raise  # the spool's bound: the pass stops
        outer.skip_to(offset + size)


def _prepend(head: bytes, read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """`read` with `head` (bytes already taken from it) served first."""
    left = [head]

    def reader(n: int) -> bytes:
        if left[0]:
            data, left[0] = left[0][:n], left[0][n:]
            return data
        return read(n)

    return reader


class _Bounded:
    """The next `n` bytes of a Forward stream, read in pieces."""

    def __init__(self, src: Forward, n: int) -> None:
        self.src, self.left = src, n

    def __call__(self, n: int) -> bytes:
        data = self.src.take(min(n, self.left))
        self.left -= len(data)
        return data


class PipeStore(TarballStore):
    """The outer tar as the pass saw it: members by path (links followed) as in a tarball, documents read
    from the spool. Layer blobs are not kept whole: the archive reads them through what the pass indexed."""

    def __init__(self, result: Pass) -> None:  # noqa: D107 - TarballStore's fields, made by the pass
        # Not TarballStore.__init__: there is no file to open; every field its lookups use is set here.
        self.name = result.name
        self.ref = None
        self.file = result.spool  # type: ignore[assignment]
        self.identity = f"pipe:{id(result)}"
        self.outer = result.outer_kept  # type: ignore[assignment]
        self.index = result.index
        self.kind_suffix = "+" + result.compression if result.compression else ""
        self.damage = self.index.error
        self.by_name = {name: i for i, name in enumerate(self.index.names)}


class PipeArchive(Archive):
    """An Archive over one pass: layer indexes and kept bytes come from the pass, nothing is cached."""

    def __init__(self, result: Pass, **kwargs: Any) -> None:  # noqa: D107
        self.pass_ = result
        kwargs["use_cache"] = False  # a pipe's bytes have no identity to key a cache by
        super().__init__(PipeStore(result), **kwargs)

    def _layer(self, member: str) -> _Layer:
        src = self.blobs.open(member)
        layer = self.pass_.layers.get(getattr(src, "base", -1))
        if layer is None:
            raise FormatError(f"{member} is not a tar layer")
        if layer.error is not None:
            raise layer.error
        return layer

    def blob(self, member: str) -> tuple[Source, str | None]:
        """The layer's uncompressed stream as the pass kept it (only the bytes of the members asked for)."""
        layer = self._layer(member)
        return layer.kept, layer.compression

    def layer_index(self, member: str, diff_id: str | None = None) -> MemberIndex:
        """The index the pass made of the layer."""
        idx = self._layer(member).index
        assert idx is not None
        if idx.error:
            self.warn(f"{member}: {idx.error}")
        return idx


def open_stream_archive(stream: IO[bytes] | str, *, keep: Iterable[str] = (), subtrees: bool = False,
                        name: str | None = None, spool_limit: int | None = None, **kwargs: Any) -> Archive:
    """Read an image tar from a pipe (a binary file object, or the path of a FIFO) in one pass.

    `keep` names the image paths whose bytes are kept for reading (`subtrees`: with all below them);
    the listings (images, layers, find, ls, diff) need none. Keywords as for open_archive (warn, ...).
    """
    fh: IO[bytes]
    if isinstance(stream, str):
        try:
            fh = open(stream, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as e:
            raise FormatError(f"{stream}: cannot open: {e.strerror}") from None
        label = name or stream
    else:
        fh, label = stream, name or "-"
        with contextlib.suppress(AttributeError, ValueError):
            if fh.isatty():  # nothing is piped in: waiting for a terminal to type a tar would look like a hang
                raise FormatError(f"{label}: standard input is a terminal: pipe an image archive in "
                                  "(docker save app | imgfs ...)")
    try:
        fd = fh.fileno()
        read: Callable[[int], bytes] = lambda n: os.read(fd, n)  # noqa: E731 - unbuffered: no copy kept
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError and a ValueError
        read = fh.read
    try:
        result = Pass(read, label, keep, subtrees, spool_limit)
    except ImgfsError as e:
        raise type(e)(f"{label}: {e}") from None
    finally:
        if isinstance(stream, str):
            fh.close()
    try:
        return PipeArchive(result, **kwargs)
    except ImgfsError as e:
        result.spool.close()
        raise type(e)(f"{label}: {e}") from None
