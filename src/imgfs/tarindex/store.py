"""The persisted, content-addressed cache: member indexes, gzip seek points and zstd spools on disk."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import stat
import struct
import threading
import zlib
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import FormatError
from .names import Names
from .reader import _HEADER, BLOCK, FILE, MemberIndex, _num, _signed_checksum
from .source import Source, no_more_fds, room_in
from .sparse import SparseError, SparseMap

VERSION = 1  # of the cache's layout (its folder, v1)
# Of index files; 2: names as directories + last components (names.py), 3: narrow arrays, 4: sparse maps
# (a format-3 file lists sparse members under their stored names and sizes)
INDEX_FORMAT = 4
MAGIC = b"IMGFSIX%d" % INDEX_FORMAT
DEFAULT_MAX_BYTES = 8 << 30
_ARRAYS = ("modes", "uids", "gids", "sizes", "mtimes", "offsets")


def default_dir() -> Path:
    """$XDG_CACHE_HOME/imgfs, else ~/.cache/imgfs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgfs"


def _file_key(key: str) -> str:
    alg, _, hexpart = key.partition(":")
    if alg == "sha256" and len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart):
        return hexpart
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def dump_index(idx: MemberIndex, stream_size: int, out: BinaryIO | None = None) -> bytes:
    """Serialise a member index: a JSON header for the sparse parts, then the raw arrays and names.

    Given `out`, it is written there piece by piece (and b"" returned): no copy of the whole index is
    made, which for many's 348k members is 80 MB less at the peak of a first scan.
    """
    if out is None:
        buf = io.BytesIO()
        dump_index(idx, stream_size, buf)
        return buf.getvalue()
    names = idx.names
    lat = lambda b: b.decode("latin-1")  # noqa: E731 - lossless bytes -> str for JSON
    meta = {
        "n": len(idx), "size": stream_size, "end": idx.end, "error": idx.error, "skipped": idx.skipped[:1000],
        "links": {i: lat(v) for i, v in idx.links.items()},
        "devices": {i: list(v) for i, v in idx.devices.items()},
        "xattrs": {i: {k: lat(v) for k, v in x.items()} for i, x in idx.xattrs.items()},
        "broken": idx.broken, "frac": idx.mtime_frac, "md": idx.meta_digest,
        "sparse": {i: m.flat() for i, m in idx.sparse.items()}, "truncated": idx.truncated,
        "dirs": len(names.dirs), "bounds": names.bounds.typecode,
        "types": [getattr(idx, name).typecode for name in _ARRAYS],
    }
    head = json.dumps(meta, separators=(",", ":")).encode()
    out.write(MAGIC + struct.pack("<Q", len(head)) + head)
    out.write(idx.kinds)
    for name in _ARRAYS:
        getattr(idx, name).tofile(out)
    names.dir_of.tofile(out)
    names.bounds.tofile(out)
    dirs = names.dirs
    for start in range(0, len(dirs), 65536):
        out.write(b"".join(d + b"\0" for d in dirs[start:start + 65536]))
    out.write(names.blob)
    return b""


class StaleIndex(ValueError):
    """An index file an earlier imgfs wrote: expected after an upgrade, rebuilt without a warning."""


def load_index(data: bytes | BinaryIO) -> tuple[MemberIndex, int]:
    """Parse what dump_index wrote (bytes, or an open file); ValueError (or KeyError/TypeError) on anything else.

    From a file, the arrays are read straight into place: no copy of the whole file is held.
    """
    fh = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    head = fh.read(len(MAGIC) + 8)
    if head[:len(MAGIC)] != MAGIC or len(head) < len(MAGIC) + 8:
        if head[:7] == MAGIC[:7] and head[7:8].isdigit() and int(head[7:8]) < INDEX_FORMAT:
            raise StaleIndex("an index file of an earlier format")
        raise ValueError("not an imgfs index file of this version")
    (hlen,) = struct.unpack_from("<Q", head, len(MAGIC))
    try:
        meta = json.loads(fh.read(min(hlen, 1 << 30)))
    except RecursionError:
        raise ValueError("index file header nested too deeply") from None
    n = int(meta["n"])
    idx = MemberIndex()
    idx.kinds = bytearray(fh.read(n))
    types = meta["types"]
    if not isinstance(types, list) or len(types) != len(_ARRAYS) or not set(types) <= set("HIq"):
        raise ValueError("index file header is inconsistent")
    for name, typecode in zip(_ARRAYS, types, strict=True):
        arr = array(typecode)
        try:
            arr.fromfile(fh, n)
        except EOFError:
            raise ValueError("index file is cut short") from None
        setattr(idx, name, arr)
    dir_of, bounds = array("i"), array(meta["bounds"] if meta["bounds"] in ("I", "q") else "?")
    try:
        dir_of.fromfile(fh, n)
        bounds.fromfile(fh, n + 1)
    except EOFError:
        raise ValueError("index file is cut short") from None
    nd = int(meta["dirs"])
    rest = fh.read()
    dirs = rest.split(b"\0", nd)
    if len(dirs) != nd + 1 or len(idx.kinds) != n:
        raise ValueError("index file is inconsistent")
    idx.names = Names.of(dirs[:nd], dir_of, bounds, dirs[nd])
    enc = lambda s: s.encode("latin-1")  # noqa: E731
    idx.links = {int(i): enc(v) for i, v in meta["links"].items()}
    idx.devices = {int(i): (int(v[0]), int(v[1])) for i, v in meta["devices"].items()}
    idx.xattrs = {int(i): {k: enc(v) for k, v in x.items()} for i, x in meta["xattrs"].items()}
    idx.broken = {int(i): str(v) for i, v in meta["broken"].items()}
    idx.mtime_frac = {int(i): float(v) for i, v in meta["frac"].items()}
    idx.error, idx.skipped, idx.end = meta["error"], list(meta["skipped"]), int(meta["end"])
    idx.truncated = meta["truncated"] is True
    try:
        idx.sparse = {int(i): SparseMap.from_flat(v, idx.sizes[int(i)], idx.end) for i, v in meta["sparse"].items()}
    except SparseError as e:
        raise ValueError(str(e)) from None
    md = meta.get("md")
    idx.meta_digest = md if isinstance(md, str) else None
    return idx, int(meta["size"])


def looks_right(idx: MemberIndex, src: Source, stream_size: int, spot_check: bool = True) -> bool:
    """Cheap check that a cached index fits this stream: same size, and real headers where it says.

    The spot check reads two headers, judged as the scan judges them; callers skip it where a read means
    decompressing (gzip).
    """
    if stream_size != src.size:
        return False
    for i in {0, len(idx) - 1} if len(idx) and spot_check else ():
        if i in idx.sparse:
            continue  # its map, not its header, lies before its data
        at = idx.offsets[i] - BLOCK
        if at < 0:
            return False
        hdr = src.pread(at, BLOCK)
        _, _, _, _, size, _, chksum, typeflag = _HEADER.unpack_from(hdr)
        try:
            stored, size_v = _num(chksum), _num(size)
        except FormatError:
            return False
        if stored != sum(hdr) - sum(chksum) + 256 and stored != _signed_checksum(hdr):
            return False
        if idx.kinds[i] == FILE and typeflag in (b"0", b"\0") and size_v != idx.sizes[i]:
            return False
    return True


class CacheDamage(ValueError):
    """A cache file that is not what imgfs wrote: no regular file, too large, or failing its checksum."""


# Every cache file but a zstd spool starts with a seal: this tag, the length of what follows and its CRC-32,
# checked as the file streams in. (A spool checks itself block by block: see compressed.py.)
_SEAL = struct.Struct("<8sQI")
_SEAL_TAG = b"IMGFSCK1"
_MAX_SMALL = 1 << 20  # .ptr files are a few hundred bytes; nothing larger is read as one


def _unsealed_but_ours(head: bytes) -> bool:
    """Whether a file without a seal is what an earlier imgfs wrote (rebuilt silently, as after an upgrade)."""
    old_index = head[:7] == MAGIC[:7] and head[7:8].isdigit() and int(head[7:8]) <= INDEX_FORMAT
    return old_index or head.startswith(b'{"key"') or head[:16].isdigit()


class _SealedReader:
    """Reads a sealed file's content, hashing it as it goes; verify() at the end says whether it was whole."""

    def __init__(self, fh: BinaryIO, length: int, crc: int, name: str) -> None:
        self._fh, self._left, self._want, self._crc, self.name = fh, length, crc, 0, name

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        self._crc = zlib.crc32(data, self._crc)
        return data

    def verify(self) -> None:
        """Raise CacheDamage unless every byte was read and the checksum matches."""
        if self._left or self._fh.read(1) or self._crc != self._want:
            raise CacheDamage(f"cache file {self.name} fails its checksum")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> _SealedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SealWriter:
    """Counts and hashes what goes into a sealed file."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh, self.length, self.crc = fh, 0, 0

    def write(self, data: bytes) -> int:
        self.length += len(data)
        self.crc = zlib.crc32(data, self.crc)
        return self._fh.write(data)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class Store:
    """A size-bounded directory of cache files, written atomically and evicted least recently used first.

    The root is where the user points; below it nothing is followed: every file and folder is opened
    relative to its folder's descriptor with O_NOFOLLOW, so a symlink planted in the cache can never make
    imgfs read, write or delete outside it. Only regular files of bounded size are read.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 warn: Callable[[str], None] | None = None) -> None:
        self.root = Path(root) if root is not None else default_dir()
        self.max_bytes = max_bytes
        self._warn = warn
        self._warned: set[str] = set()
        self._disabled: str | None = None
        self._lock = threading.Lock()

    def path(self, kind: str, key: str, suffix: str) -> Path:
        """Where the cache file of `kind` for `key` lives (to show it: imgfs opens it by folder descriptors)."""
        return self.root / f"v{VERSION}" / kind / self._name(key, suffix)

    @staticmethod
    def _name(key: str, suffix: str) -> str:
        return _file_key(key) + suffix

    def warn_once(self, message: str) -> None:
        """Warn through the callback, once per distinct message."""
        with self._lock:
            if message in self._warned:
                return
            self._warned.add(message)
        if self._warn is not None:
            self._warn(message)

    # -- folders, by descriptor -------------------------------------------------------------------
    def _dir(self, kind: str | None, create: bool = False) -> int | None:
        """A descriptor of v1/<kind> (v1 alone for None), reached without following a link; None if absent."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as e:
            no_more_fds(e, "cache")
            if create:
                raise
            return None
        try:
            for part in (f"v{VERSION}", kind) if kind else (f"v{VERSION}",):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    sub = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as e:
                    no_more_fds(e, "cache")
                    if create:
                        raise
                    os.close(fd)
                    return None
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_fd(self, kind: str, key: str, suffix: str, limit: int | None = None) -> int | None:
        """A descriptor of a regular cache file (marked used), or None if absent; CacheDamage if it is no
        regular file or larger than `limit`. The caller closes it."""
        d = self._dir(kind)
        if d is None:
            return None
        name = self._name(key, suffix)
        try:
            # O_NONBLOCK: a FIFO planted here must not block the open (read() is never reached for one).
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=d)
        except FileNotFoundError:
            return None
        except OSError as e:
            no_more_fds(e, "cache")
            raise CacheDamage(f"cache file {kind}/{name} cannot be opened ({e.strerror})") from None
        finally:
            os.close(d)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > (limit if limit is not None else self.max_bytes):
            os.close(fd)
            raise CacheDamage(f"cache file {kind}/{name} is no regular file of a sensible size")
        with contextlib.suppress(OSError):
            os.utime(fd)
        return fd

    def open(self, kind: str, key: str, suffix: str, limit: int | None = None) -> _SealedReader | None:
        """A sealed cache file's content, to read (then verify()); None if absent or written by an earlier imgfs.

        CacheDamage where the file is not one imgfs wrote (its checksum is verified as it is read).
        """
        fd = self.open_fd(kind, key, suffix, limit)
        if fd is None:
            return None
        fh = os.fdopen(fd, "rb")
        try:
            head = fh.read(_SEAL.size)
            if head[:8] != _SEAL_TAG or len(head) < _SEAL.size:
                if _unsealed_but_ours(head):
                    fh.close()
                    return None
                raise CacheDamage(f"cache file {kind}/{self._name(key, suffix)} is not one imgfs wrote")
            _, length, crc = _SEAL.unpack(head)
            return _SealedReader(fh, length, crc, f"{kind}/{self._name(key, suffix)}")
        except BaseException:
            fh.close()
            raise

    def read(self, kind: str, key: str, suffix: str, limit: int | None = None) -> bytes | None:
        """The verified content of a small sealed cache file (and mark it used); None if absent; else CacheDamage."""
        r = self.open(kind, key, suffix, _MAX_SMALL if limit is None else limit)
        if r is None:
            return None
        with r:
            data = r.read()
            r.verify()
        return data

    # -- writing ----------------------------------------------------------------------------------
    def write(self, kind: str, key: str, suffix: str, data: bytes) -> None:
        """Store bytes atomically, sealed; a cache that cannot be written only costs speed (said once)."""
        self.write_with(kind, key, suffix, lambda fh: fh.write(data))

    def write_with(self, kind: str, key: str, suffix: str, fill: Callable[[BinaryIO], object],
                   sealed: bool = True) -> bool:
        """Let `fill(fileobj)` write a cache file, then move it into place; False if caching is off.

        `sealed`: the content gets its length and checksum in front (every kind but a zstd spool).
        """
        if self._disabled:
            return False
        name = self._name(key, suffix)
        try:
            d = self._dir(kind, create=True)
            assert d is not None
            try:
                tmp = f".tmp-{os.getpid()}-{secrets.token_hex(6)}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=d)
                try:
                    with os.fdopen(fd, "wb") as fh:
                        if sealed:
                            fh.write(bytes(_SEAL.size))
                            w = _SealWriter(fh)
                            fill(w)  # type: ignore[arg-type]
                            fh.seek(0)
                            fh.write(_SEAL.pack(_SEAL_TAG, w.length, w.crc))
                        else:
                            fill(fh)
                    # atomic: a concurrent reader sees the old file or the new one
                    os.replace(tmp, name, src_dir_fd=d, dst_dir_fd=d)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=d)
                    raise
            finally:
                os.close(d)
        except OSError as e:
            no_more_fds(e, "cache")
            with self._lock:
                first = not self._disabled
                self._disabled = self._disabled or str(e)
            if first:
                self.warn_once(f"cache {self.root} cannot be written ({e.strerror or e}); working without it")
            return False
        self.evict()
        return True

    def remove(self, kind: str, key: str, suffix: str) -> None:
        """Delete one cache file (never what a link points at)."""
        self._unlink(kind, self._name(key, suffix))

    def _unlink(self, kind: str, name: str) -> None:
        d = self._dir(kind)
        if d is not None:
            try:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=d)
            finally:
                os.close(d)

    def room(self) -> int | None:
        """The bytes a new cache file may take on the cache's filesystem (80% of the free space)."""
        where = self.root
        while not where.exists() and where != where.parent:
            where = where.parent
        return room_in(str(where))

    # -- listing, bounding, clearing ----------------------------------------------------------------
    def _entries(self) -> Iterator[tuple[int, str, str, os.stat_result]]:
        """(folder descriptor, kind, name, lstat) of every entry one level below each v1/<kind> folder."""
        top = self._dir(None)
        if top is None:
            return
        try:
            for kind in os.listdir(top):
                try:
                    d = os.open(kind, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=top)
                except OSError:
                    continue  # a file, a link or gone: not a folder of the cache
                try:
                    for name in os.listdir(d):
                        with contextlib.suppress(OSError):
                            yield d, kind, name, os.stat(name, dir_fd=d, follow_symlinks=False)
                finally:
                    os.close(d)
        finally:
            os.close(top)

    def files(self) -> list[tuple[Path, int, float]]:
        """Every cache file with its size and last use."""
        base = self.root / f"v{VERSION}"
        return [(base / kind / name, st.st_size, st.st_mtime) for _, kind, name, st in self._entries()
                if stat.S_ISREG(st.st_mode) and not name.startswith(".tmp-")]

    def evict(self) -> None:
        """Delete least recently used files until the cache is within its size bound."""
        files = self.files()
        total = sum(s for _, s, _ in files)
        if total <= self.max_bytes:
            return
        for p, size, _ in sorted(files, key=lambda f: f[2]):
            self._unlink(p.parent.name, p.name)
            total -= size
            if total <= self.max_bytes * 9 // 10:
                break

    def clear(self) -> int:
        """Delete every cache file (a link planted in the cache is removed, never followed); return the bytes freed."""
        freed = 0
        for d, _, name, st in self._entries():
            if name.startswith(".tmp-") or stat.S_ISDIR(st.st_mode):
                continue
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=d)
                freed += st.st_size if stat.S_ISREG(st.st_mode) else 0
        return freed
