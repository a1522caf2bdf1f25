"""Scan a tar stream's headers (seeking past data) into a compact offset index of its members."""

from __future__ import annotations

import base64
import hashlib
import struct
from array import array
from collections.abc import Callable
from zlib import adler32

from ..errors import FormatError, TruncatedError
from .names import Names
from .source import Source
from .sparse import MAP_00, MAX_SPARSE_SEGMENTS_PER_LAYER, SparseMap
from .sparse import gnu_old as sparse_gnu
from .sparse import pax as sparse_pax

BLOCK = 512
_WINDOW = 256 * 1024
_HEADER = struct.Struct("100s8s8s8s12s12s8sc")
_ZERO_BLOCK = bytes(BLOCK)
MAX_META = 16 << 20  # PAX records and GNU long names larger than this are refused, not buffered

# Member kinds, as the tar type flag byte; '0' also stands for '\0', '7' and unknown types.
FILE, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO = (ord(c) for c in "0123456")
KIND_NAMES = {FILE: "file", HARDLINK: "hardlink", SYMLINK: "symlink", CHAR: "char",
              BLOCKDEV: "block", DIR: "dir", FIFO: "fifo"}
_KNOWN = {ord(c) for c in "0123456"}


def _num(field: bytes) -> int:
    """Parse a numeric header field: octal text, or base-256 when the high bit is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:  # negative base-256 (two's complement)
            value -= 1 << (8 * (len(field) - 1))
        else:
            value += (field[0] & 0x7F) << (8 * (len(field) - 1))
        return value
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise FormatError(f"bad number {text[:20]!r} in a tar header") from None


def show(name: bytes) -> str:
    """A member name for a message: decoded, undecodable bytes escaped."""
    return name.decode("utf-8", "backslashreplace")


def _signed_checksum(block: bytes) -> int:
    """The header checksum as old tars computed it, with signed bytes."""
    body = block[:148] + b"        " + block[156:]
    return sum(b - 256 if b > 127 else b for b in body)


def normalize(raw: bytes) -> bytes | None:
    """Turn a member name into a clean relative path ('' is the root); None if it climbs out."""
    n = raw.rstrip(b"/") if raw[-1:] == b"/" else raw
    while n[:2] == b"./":
        n = n[2:]
    if n[:1] == b"/":
        n = n.lstrip(b"/")
    if n[:1] != b"." and b"//" not in n and b"/." not in n:
        return n
    out: list[bytes] = []
    for p in n.split(b"/"):
        if p in (b"", b"."):
            continue
        if p == b"..":
            if not out:
                return None
            out.pop()
        else:
            out.append(p)
    return b"/".join(out)


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Parse PAX extended header records ('<len> <key>=<value>\\n')."""
    recs: dict[bytes, bytes] = {}
    pos = 0
    n = len(data)
    if data.count(b"\n") > MAX_PAX_RECORDS:  # refused before a dict of them is built
        raise FormatError(f"PAX header with more than {MAX_PAX_RECORDS} records")
    while pos < n:
        if data[pos] == 0:  # padding
            break
        sp = data.find(b" ", pos, pos + 24)
        if sp < 0:
            raise FormatError("malformed PAX record (no length)")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise FormatError("malformed PAX record length") from None
        end = pos + length
        if length <= sp - pos + 1 or end > n or data[end - 1:end] != b"\n":
            raise FormatError("malformed PAX record")
        key, eq, value = data[sp + 1:end - 1].partition(b"=")
        if not eq:
            raise FormatError("malformed PAX record (no '=')")
        if key == b"GNU.sparse.offset" or key == b"GNU.sparse.numbytes":  # PAX sparse 0.0: a map in order
            recs[MAP_00] = recs[MAP_00] + b"," + value if MAP_00 in recs else value
        else:
            recs[key] = value
        pos = end
    return recs


class MemberIndex:
    """The members of one tar stream in parallel arrays: 43 bytes a member plus its name's last component."""

    def __init__(self) -> None:
        self.names = Names()
        self.kinds = bytearray()
        self.modes = array("H")  # permission bits only (& 0o7777)
        self.uids = array("I")  # "q" once an id does not fit 32 bits
        self.gids = array("I")
        self.sizes = array("q")
        self.mtimes = array("q")  # whole seconds
        self.offsets = array("q")  # of the data in the stream
        self.mtime_frac: dict[int, float] = {}  # PAX sub-second parts, rare
        self.links: dict[int, bytes] = {}
        self.devices: dict[int, tuple[int, int]] = {}
        self.xattrs: dict[int, dict[str, bytes]] = {}
        self.broken: dict[int, str] = {}  # members that cannot be read, and why
        self.sparse: dict[int, SparseMap] = {}  # sparse members: where their stored segments go
        self.skipped: list[str] = []  # members left out (invalid names ...)
        self.error: str | None = None  # set when the stream ended early or went bad; members so far stay
        self.truncated = False  # the error is the stream ending early: nothing after the members kept is lost
        self.end = 0  # offset just past the last member's data
        # sha256 of every byte the index was made from (see meta_digest); None when it cannot vouch
        self.meta_digest: str | None = None

    def __len__(self) -> int:
        return len(self.kinds)

    def kind_name(self, i: int) -> str:
        """The member's kind as a word: file, hardlink, symlink, char, block, dir, fifo."""
        return KIND_NAMES[self.kinds[i]]

    def mtime(self, i: int) -> float:
        """The member's modification time, with its PAX fraction if any."""
        return self.mtimes[i] + self.mtime_frac.get(i, 0.0)


def _skip(size: int) -> int:
    return (size + 511) & ~511


def scan(src: Source, progress: Callable[[int, int], None] | None = None,
         on_member: Callable[[bytes, int, int, int, bytes | None], None] | None = None) -> MemberIndex:
    """Index every member of the tar stream in `src` by reading headers only.

    `on_member(name, kind, data offset, data size, link target)` hears of each member as it is recorded, before the
    scan reads past its data: a one-pass reader of a pipe consumes the data there (stream.py).
    """
    idx = MemberIndex()
    total = src.size
    buf = b""
    buf_off = 0
    off = 0
    pending: dict[bytes, bytes] = {}
    long_name: bytes | None = None
    long_link: bytes | None = None
    unpack = _HEADER.unpack_from
    names, kinds = idx.names, idx.kinds
    # Appended to in place, one array a field: a single interleaved array split at the end would hold
    # every number twice at the peak of a big scan.
    add_mode, add_uid, add_gid = idx.modes.append, idx.uids.append, idx.gids.append
    add_size, add_mtime, add_offset = idx.sizes.append, idx.mtimes.append, idx.offsets.append
    # Names.append, inlined (a call a member is ~5% of a scan): each directory once, last components
    # appended to one buffer, handed to the Names at the end.
    dir_ids: dict[bytes, int] = {}
    dirs, add_dir_of, add_bound = names.dirs, names.dir_of.append, names.bounds.append
    tail = bytearray()
    add_kind = kinds.append
    next_progress = 64 << 20
    window = getattr(src, "window", _WINDOW)
    digest = hashlib.sha256()
    prev_end = 0  # where the bytes the next member's entry depends on start (see meta_digest)
    vouch = True
    xattr_cost = 0  # what the layer's extended attributes cost held in memory (bounded: MAX_XATTR_BYTES)
    sparse_total = 0  # segments of the layer's sparse maps (bounded, as one member's are)

    def read_meta(at: int, size: int, what: str) -> bytes:
        if size > MAX_META:
            raise FormatError(f"{what} of {size} bytes at offset {at} is larger than {MAX_META}")
        if at + size > total:
            raise TruncatedError(f"{what} at offset {at} runs past the end of the data")
        return src.pread(at, size)

    try:
        while True:
            if off + BLOCK > total:
                if off == total:
                    break  # no end-of-archive blocks; tolerated, as GNU tar does
                raise TruncatedError(f"tar header at offset {off} is cut short (data ends at {total})")
            pos = off - buf_off
            if pos < 0 or pos + BLOCK > len(buf):
                buf_off = off
                buf = src.pread(off, min(window, total - off))
                pos = 0
            name, mode, uid, gid, size, mtime, chksum, typeflag = unpack(buf, pos)
            block = buf[pos:pos + BLOCK]
            if name[:1] == b"\0" and block == _ZERO_BLOCK:
                break
            try:
                # Fast path: plain octal fields, as nearly every tar writer makes them.
                stored = int(chksum.rstrip(b"\0 "), 8)
                size_v = int(size.rstrip(b"\0 "), 8)
            except ValueError:
                stored, size_v = _num(chksum), _num(size)
            # sum(block) would cost half of this loop. Adler-32's low half is (1 + byte sum) mod 65521: exactly
            # 1 + the sum when at most 256 bytes are non-zero (256 * 255 < 65520), as in nearly every header.
            byte_sum = (adler32(block) & 0xFFFF) - 1 if block.count(0) >= 256 else sum(block)
            computed = byte_sum - sum(chksum) + 256
            if stored != computed and stored != _signed_checksum(block):
                if not kinds and off == 0:
                    raise FormatError("not a tar archive (bad header checksum at offset 0)")
                raise FormatError(f"corrupt tar header at offset {off} (checksum mismatch)")
            t = typeflag[0]
            data_off = off + BLOCK
            if not 0 <= size_v < 1 << 62:
                raise FormatError(f"impossible size {size_v} in tar header at offset {off}")
            if t in _META_TYPES:
                if t == 0x78 or t == 0x58:  # 'x' / 'X': PAX header for the next member
                    pending.update(_parse_pax(read_meta(data_off, size_v, "PAX header")))
                elif t == 0x4C:  # 'L': GNU long name
                    long_name = read_meta(data_off, size_v, "GNU long name").rstrip(b"\0")
                elif t == 0x4B:  # 'K': GNU long link name
                    long_link = read_meta(data_off, size_v, "GNU long link").rstrip(b"\0")
                # 'g' (global PAX header) is ignored (LAYER-RULES rule 19)
                off = data_off + _skip(size_v)
                continue
            try:
                mode_v = int(mode.rstrip(b"\0 "), 8)
                uid_v = int(uid.rstrip(b"\0 "), 8)
                gid_v = int(gid.rstrip(b"\0 "), 8)
                mtime_v = int(mtime.rstrip(b"\0 "), 8)
            except ValueError:
                mode_v, uid_v, gid_v, mtime_v = _num(mode), _num(uid), _num(gid), _num(mtime)

            if long_name is not None:
                full = long_name
            elif buf[pos + 345] != 0 and buf[pos + 257:pos + 263] == b"ustar\x00":
                full = buf[pos + 345:pos + 500].split(b"\0", 1)[0] + b"/" + name.split(b"\0", 1)[0]
            else:
                full = name.split(b"\0", 1)[0]
            link = long_link
            if link is None and (t in (HARDLINK, SYMLINK)):
                link = buf[pos + 157:pos + 257].split(b"\0", 1)[0]
            sparse = t == 0x53
            xattrs: dict[str, bytes] | None = None
            frac = 0.0
            if pending:
                full, link, size_v, uid_v, gid_v, mtime_v, frac, xattrs, sparse = _apply_pax(
                    pending, off, full, link, size_v, uid_v, gid_v, mtime_v, sparse)
                pending = {}
            long_name = long_link = None

            if t not in _KNOWN:
                t = FILE  # POSIX: an unknown type is read as a regular file
            # Only regular files carry data in the stream; other kinds' size fields are ignored.
            data_len = size_v if t == FILE else 0  # the size listed; `end`: where the stored bytes end
            end = data_off + data_len
            sparse_map = why = None
            if sparse and t == FILE:  # rare: off the fast path
                data_len, end, sparse_map, why = (
                    sparse_gnu(src, buf[pos:pos + BLOCK], data_off, size_v) if sparse is True
                    else sparse_pax(src, sparse, data_off, size_v))
            norm = normalize(full)
            bad = "climbs above the root" if norm is None else _bad_name(norm)
            if link is not None and not bad:
                bad = _bad_link(link)
            device = None
            if t in (CHAR, BLOCKDEV):
                device = (_num(buf[pos + 329:pos + 337]), _num(buf[pos + 337:pos + 345]))
                if not bad and not (0 <= device[0] <= _DEV_MAX and 0 <= device[1] <= _DEV_MAX):
                    bad = f"device number {device[0]},{device[1]} out of range"
            if xattrs and not bad:
                xattr_cost += sum(len(k) + len(v) + _XATTR_OVERHEAD for k, v in xattrs.items())
                if xattr_cost > MAX_XATTR_BYTES:
                    raise FormatError(f"extended attributes of the members up to offset {off} take more than "
                                      f"{MAX_XATTR_BYTES >> 20} MiB")
            if bad:
                idx.skipped.append(f"{show(full[:200])}: {bad}")
                vouch = False  # its bytes sit between two entries, where meta_digest does not look
            else:
                if data_off - prev_end > _MAX_GAP:
                    vouch = False
                elif vouch:
                    lo = prev_end - buf_off
                    digest.update(buf[lo:pos + BLOCK] if lo >= 0 else src.pread(prev_end, data_off - prev_end))
                prev_end = data_off + _skip(end - data_off)
                i = len(kinds)
                d, _, b = norm.rpartition(b"/")
                k = dir_ids.get(d)
                if k is None:
                    k = dir_ids[d] = len(dirs)
                    dirs.append(d)
                add_dir_of(k)
                tail += b
                try:
                    add_bound(len(tail))
                except OverflowError:  # names past 4 GiB: bounds widen to 64 bits
                    names.bounds = array("q", names.bounds)
                    add_bound = names.bounds.append
                    add_bound(len(tail))
                add_kind(t)
                if not (0 <= uid_v <= _U32 and 0 <= gid_v <= _U32 and -_LIM < mtime_v < _LIM):
                    uid_v, gid_v = _clamp(uid_v), _clamp(gid_v)
                    mtime_v = mtime_v if -_LIM < mtime_v < _LIM else 0
                    if (uid_v > _U32 or gid_v > _U32) and idx.uids.typecode != "q":
                        idx.uids, idx.gids = array("q", idx.uids), array("q", idx.gids)  # ids past 32 bits: rare
                        add_uid, add_gid = idx.uids.append, idx.gids.append
                add_mode(mode_v & 0o7777)
                add_uid(uid_v)
                add_gid(gid_v)
                add_size(data_len)
                add_mtime(mtime_v)
                add_offset(data_off)
                if t in (HARDLINK, SYMLINK):
                    idx.links[i] = link or b""
                elif device is not None:
                    idx.devices[i] = device
                if xattrs:
                    idx.xattrs[i] = xattrs
                if frac:
                    idx.mtime_frac[i] = frac
                if sparse:
                    if sparse_map is not None:
                        # Its data starts past its map, which decides what it reads: meta_digest covers it.
                        idx.sparse[i] = sparse_map
                        idx.offsets[i] = sparse_map.data_at
                        if vouch:
                            digest.update(src.pread(data_off, sparse_map.data_at - data_off))
                        sparse_total += len(sparse_map)
                        if sparse_total > MAX_SPARSE_SEGMENTS_PER_LAYER:
                            raise FormatError(f"sparse members up to offset {off} have more than "
                                              f"{MAX_SPARSE_SEGMENTS_PER_LAYER} segments in all")
                    else:
                        idx.broken[i] = why or "sparse member without a map"
                        vouch = False  # where its data starts is not known, so neither is where to digest
                if end > total:
                    idx.broken[i] = "the member's data is cut off (truncated archive)"
                if on_member is not None:
                    on_member(norm, t, data_off, data_len, link)
            if end > total:
                raise TruncatedError(f"member {show(full[-80:])} at offset {off} runs past the end of the data")
            off = data_off + _skip(end - data_off)
            if progress is not None and off >= next_progress:
                progress(off, total)
                next_progress = off + (64 << 20)
    except FormatError as e:
        idx.error, idx.truncated = str(e), isinstance(e, TruncatedError)
        if not kinds and off == 0:
            if str(e).startswith("not a tar archive"):
                raise
            raise FormatError(f"not a tar archive ({e})") from None
    names.adopt(tail)
    idx.end = off
    if vouch and not idx.error and 0 <= off - prev_end <= _MAX_GAP:
        digest.update(src.pread(prev_end, off - prev_end) + src.pread(off, min(BLOCK, total - off)))
        idx.meta_digest = digest.hexdigest()
    if progress is not None:
        progress(min(off, total), total)
    return idx


_MAX_GAP = 2 * MAX_META + 4 * BLOCK  # the most that may lie between two entries: PAX and GNU long names


def meta_digest(idx: MemberIndex, src: Source) -> str | None:
    """sha256 of the bytes of `src` that `idx` was made from: each entry's headers, the end marker.

    These bytes alone decide every field and offset a scan records, so where the digest of a cached index
    matches a stream, scanning that stream would give the same index: it can be reused without trusting
    whoever claimed the layer's digest. Reads only headers (no data); None where gaps are too large.
    """
    h = hashlib.sha256()
    prev, buf, buf_off, total = 0, b"", 0, src.size
    sizes: array | list[int] = idx.sizes
    if idx.sparse:  # what a sparse member stores, not its real size, lies before the next header
        sizes = list(sizes)
        for i, m in idx.sparse.items():
            sizes[i] = m.stored
    for data_off, size in zip(idx.offsets, sizes, strict=True):
        if not 0 <= data_off - prev <= _MAX_GAP:
            return None
        if prev < buf_off or data_off > buf_off + len(buf):
            buf_off = prev
            buf = src.pread(prev, max(data_off - prev, min(_WINDOW, total - prev)))
        h.update(buf[prev - buf_off:data_off - buf_off])
        prev = data_off + _skip(size)
    end = idx.end
    if not 0 <= end - prev <= _MAX_GAP or end > total:
        return None
    h.update(src.pread(prev, end - prev) + src.pread(end, min(BLOCK, total - end)))
    return h.hexdigest()


_META_TYPES = frozenset(b"xXgLK")
PATH_MAX = 4096  # Linux's limit; longer names cannot be real files and would cost memory per component
MAX_LINK_HOPS = 40  # Linux's limit on symlinks followed in one path lookup (MAXSYMLINKS)


def _bad_name(norm: bytes) -> str | None:
    if len(norm) > PATH_MAX:
        return f"longer than {PATH_MAX} bytes"
    if b"\0" in norm:
        return "has a NUL byte"
    return None


def _bad_link(link: bytes) -> str | None:
    if len(link) > PATH_MAX:
        return f"link target longer than {PATH_MAX} bytes"
    if b"\0" in link:  # only a PAX linkpath can hold one; no file system can
        return "link target has a NUL byte"
    return None


_DEV_MAX = 0x7FFFFFFF  # the largest major or minor number os.makedev takes
# Hostile PAX headers: 16 members of 500k one-byte xattrs were 1.35 GB held as dicts. A header may hold at
# most this many records (room for a PAX sparse 0.0 map of MAX_SPARSE_SEGMENTS segments, two records each);
MAX_PAX_RECORDS = (1 << 17) + 1024
# and a layer's xattrs at most this much memory, each counted as name + value + what a dict entry costs.
MAX_XATTR_BYTES = 64 << 20
_XATTR_OVERHEAD = 128


_LIM = 1 << 62  # what the index's signed 64-bit arrays hold with room to spare
_U32 = 0xFFFFFFFF  # owner ids fit 32 bits (their arrays widen to 64 when one does not)


def _clamp(v: int) -> int:
    return v if 0 <= v < _LIM else 0


def _apply_pax(p: dict[bytes, bytes], off: int, full: bytes, link: bytes | None, size_v: int, uid_v: int,
               gid_v: int, mtime_v: int, sparse: bool | dict[bytes, bytes]) -> tuple:
    """Let PAX records override the header's fields (LAYER-RULES rule 19) and collect xattrs (rule 20)."""
    frac = 0.0
    xattrs: dict[str, bytes] | None = None
    if b"path" in p:
        full = p[b"path"]
    if b"GNU.sparse.name" in p:  # a sparse member's real name (its header has GNUSparseFile.<pid>/<name>)
        full = p[b"GNU.sparse.name"]
    if b"linkpath" in p:
        link = p[b"linkpath"]
    try:
        if b"size" in p:
            size_v = int(p[b"size"])
        if b"uid" in p:
            uid_v = _clamp(int(p[b"uid"]))
        if b"gid" in p:
            gid_v = _clamp(int(p[b"gid"]))
        if b"mtime" in p:
            value = p[b"mtime"].strip()
            whole, _, part = value.partition(b".")
            mtime_v = int(whole)
            frac = float(b"0." + part) if part.isdigit() else 0.0
            if value.startswith(b"-") and frac:  # -1.25 is -2 + 0.75: keep the fraction positive
                mtime_v, frac = mtime_v - 1, 1.0 - frac
    except ValueError:
        raise FormatError(f"bad number in the PAX header of the member at offset {off}") from None
    if not 0 <= size_v < 1 << 62:
        raise FormatError(f"impossible size {size_v} in the PAX header at offset {off}")
    for k, v in p.items():
        if k.startswith(b"SCHILY.xattr."):
            xattrs = xattrs or {}
            xattrs[k[13:].decode("utf-8", "surrogateescape")] = v
        elif k.startswith(b"LIBARCHIVE.xattr."):
            xattrs = xattrs or {}
            import urllib.parse  # rare (LIBARCHIVE.xattr records), and slow to import

            key = urllib.parse.unquote_to_bytes(k[17:]).decode("utf-8", "surrogateescape")
            try:
                xattrs[key] = base64.b64decode(v)
            except ValueError:
                xattrs[key] = v
        elif k.startswith(b"GNU.sparse."):
            sparse = sparse or p  # the records say where the map is (an old GNU 'S' header has its own)
    return full, link, size_v, uid_v, gid_v, mtime_v, frac, xattrs, sparse
