"""The persisted, content-addressed cache: member indexes, gzip seek points and zstd spools on disk."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import threading
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .names import Names
from .reader import BLOCK, FILE, MemberIndex
from .source import Source
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

    The spot check reads two headers; callers skip it where a read means decompressing (gzip).
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
        try:
            stored = int(hdr[148:156].rstrip(b"\0 "), 8)
        except ValueError:
            return False
        if stored != sum(hdr) - sum(hdr[148:156]) + 256:
            return False
        plain_file = idx.kinds[i] == FILE and hdr[156:157] in (b"0", b"\0") and hdr[124] & 0x80 == 0
        if plain_file and int(hdr[124:136].rstrip(b"\0 ") or b"0", 8) != idx.sizes[i]:
            return False
    return True


class Store:
    """A size-bounded directory of cache files, written atomically and evicted least recently used first."""

    def __init__(self, root: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 warn: Callable[[str], None] | None = None) -> None:
        self.root = Path(root) if root is not None else default_dir()
        self.max_bytes = max_bytes
        self._warn = warn
        self._disabled: str | None = None
        self._lock = threading.Lock()

    def path(self, kind: str, key: str, suffix: str) -> Path:
        """Where the cache file of `kind` for `key` lives."""
        return self.root / f"v{VERSION}" / kind / (_file_key(key) + suffix)

    def warn_once(self, message: str) -> None:
        """Warn through the callback, once per distinct message."""
        if self._warn is not None:
            self._warn(message)

    def open(self, kind: str, key: str, suffix: str) -> BinaryIO | None:
        """A cache file opened for reading (and marked used), or None; the caller closes it."""
        p = self.path(kind, key, suffix)
        try:
            fh = open(p, "rb")  # noqa: SIM115 - handed to the caller
        except OSError:
            return None
        with contextlib.suppress(OSError):
            os.utime(p)
        return fh

    def read(self, kind: str, key: str, suffix: str) -> bytes | None:
        """The bytes of a cache file (and mark it used), or None."""
        fh = self.open(kind, key, suffix)
        if fh is None:
            return None
        with fh:
            try:
                return fh.read()
            except OSError:
                return None

    def write(self, kind: str, key: str, suffix: str, data: bytes) -> None:
        """Store bytes atomically; a cache that cannot be written only costs speed (said once)."""
        self.write_with(kind, key, suffix, lambda fh: fh.write(data))

    def write_with(self, kind: str, key: str, suffix: str, fill: Callable, max_size: int | None = None) -> Path | None:
        """Let `fill(fileobj)` write a cache file, then move it into place; None if caching is off."""
        if self._disabled:
            return None
        p = self.path(kind, key, suffix)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            import tempfile  # here: reading the cache, as a warm mount does, never needs it

            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=p.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fill(fh)
                os.replace(tmp, p)  # atomic: a concurrent reader sees the old file or the new one
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            with self._lock:
                if not self._disabled:
                    self._disabled = str(e)
                    self.warn_once(f"cache {self.root} cannot be written ({e.strerror or e}); working without it")
            return None
        self.evict()
        return p

    def evict(self) -> None:
        """Delete least recently used files until the cache is within its size bound."""
        files = self.files()
        total = sum(s for _, s, _ in files)
        if total <= self.max_bytes:
            return
        for p, size, _ in sorted(files, key=lambda f: f[2]):
            try:
                p.unlink()
            except OSError:
                continue
            total -= size
            if total <= self.max_bytes * 9 // 10:
                break

    def files(self) -> list[tuple[Path, int, float]]:
        """Every cache file with its size and last use."""
        out = []
        base = self.root / f"v{VERSION}"
        if not base.is_dir():
            return out
        for p in base.rglob("*"):
            try:
                st = p.stat()
            except OSError:
                continue
            if p.is_file() and not p.name.startswith(".tmp-"):
                out.append((p, st.st_size, st.st_mtime))
        return out

    def clear(self) -> int:
        """Delete every cache file; return how many bytes were freed."""
        freed = 0
        for p, size, _ in self.files():
            try:
                p.unlink()
                freed += size
            except OSError:
                pass
        return freed
