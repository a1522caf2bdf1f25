"""Scan a tar stream's headers (seeking past data) into a compact offset index of its members."""

from __future__ import annotations

import base64
import struct
import urllib.parse
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import FormatError, TruncatedError
from .source import Source

BLOCK = 512
_WINDOW = 256 * 1024
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s")
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


def _signed_checksum(block: bytes) -> int:
    """The header checksum as old tars computed it, with signed bytes."""
    body = block[:148] + b"        " + block[156:]
    return sum(b - 256 if b > 127 else b for b in body)


def normalize(raw: bytes) -> bytes | None:
    """Turn a member name into a clean relative path ('' is the root); None if it climbs out."""
    parts = raw.split(b"/")
    if b"" not in parts and b"." not in parts and b".." not in parts:
        return raw
    out: list[bytes] = []
    for p in parts:
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
        recs[key] = value
        pos = end
    return recs


@dataclass
class MemberIndex:
    """The members of one tar stream in parallel arrays (about 50 bytes a member plus its name)."""

    names: list[bytes] = field(default_factory=list)
    kinds: bytearray = field(default_factory=bytearray)
    modes: array = field(default_factory=lambda: array("I"))
    uids: array = field(default_factory=lambda: array("Q"))
    gids: array = field(default_factory=lambda: array("Q"))
    sizes: array = field(default_factory=lambda: array("Q"))
    mtimes: array = field(default_factory=lambda: array("d"))
    offsets: array = field(default_factory=lambda: array("Q"))
    links: dict[int, bytes] = field(default_factory=dict)
    devices: dict[int, tuple[int, int]] = field(default_factory=dict)
    xattrs: dict[int, dict[str, bytes]] = field(default_factory=dict)
    broken: dict[int, str] = field(default_factory=dict)  # members that cannot be read, and why
    skipped: list[str] = field(default_factory=list)  # members left out (invalid names ...)
    error: str | None = None  # set when the stream ended early or went bad; members so far stay
    end: int = 0  # offset just past the last member's data

    def __len__(self) -> int:
        return len(self.names)

    def kind_name(self, i: int) -> str:
        """The member's kind as a word: file, hardlink, symlink, char, block, dir, fifo."""
        return KIND_NAMES[self.kinds[i]]


def scan(src: Source, progress: Callable[[int, int], None] | None = None) -> MemberIndex:
    """Index every member of the tar stream in `src` by reading headers only."""
    idx = MemberIndex()
    total = src.size
    buf = b""
    buf_off = 0
    off = 0
    pending: dict[bytes, bytes] = {}
    long_name: bytes | None = None
    long_link: bytes | None = None
    unpack = _HEADER.unpack_from
    names, kinds, modes, uids, gids = idx.names, idx.kinds, idx.modes, idx.uids, idx.gids
    sizes, mtimes, offsets = idx.sizes, idx.mtimes, idx.offsets
    next_progress = 64 << 20

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
                buf = src.pread(off, min(_WINDOW, total - off))
                pos = 0
            (name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic, _ver,
             _uname, _gname, devmajor, devminor, prefix) = unpack(buf, pos)
            if name[:1] == b"\0" and buf[pos:pos + BLOCK] == _ZERO_BLOCK:
                break
            stored = _num(chksum)
            block = buf[pos:pos + BLOCK]
            computed = sum(block) - sum(chksum) + 256
            if stored != computed and stored != _signed_checksum(block):
                if not names and off == 0:
                    raise FormatError("not a tar archive (bad header checksum at offset 0)")
                raise FormatError(f"corrupt tar header at offset {off} (checksum mismatch)")
            t = typeflag[0]
            size_v = _num(size)
            data_off = off + BLOCK
            if size_v < 0:
                raise FormatError(f"negative size in tar header at offset {off}")
            if t in (0x78, 0x58):  # 'x' / 'X': PAX header for the next member
                pending.update(_parse_pax(read_meta(data_off, size_v, "PAX header")))
                off = data_off + (size_v + 511 & ~511)
                continue
            if t == 0x67:  # 'g': global PAX header, ignored (rule 19)
                off = data_off + (size_v + 511 & ~511)
                continue
            if t == 0x4C:  # 'L': GNU long name
                long_name = read_meta(data_off, size_v, "GNU long name").rstrip(b"\0")
                off = data_off + (size_v + 511 & ~511)
                continue
            if t == 0x4B:  # 'K': GNU long link name
                long_link = read_meta(data_off, size_v, "GNU long link").rstrip(b"\0")
                off = data_off + (size_v + 511 & ~511)
                continue

            if long_name is not None:
                full = long_name
            elif magic == b"ustar\x00" and prefix[:1] != b"\0":
                full = prefix.split(b"\0", 1)[0] + b"/" + name.split(b"\0", 1)[0]
            else:
                full = name.split(b"\0", 1)[0]
            link = long_link if long_link is not None else linkname.split(b"\0", 1)[0]
            mtime_v: float = _num(mtime)
            uid_v = _num(uid)
            gid_v = _num(gid)
            sparse = t == 0x53
            xattrs: dict[str, bytes] | None = None
            if pending:
                p = pending
                if b"path" in p:
                    full = p[b"path"]
                if b"linkpath" in p:
                    link = p[b"linkpath"]
                try:
                    if b"size" in p:
                        size_v = int(p[b"size"])
                    if b"uid" in p:
                        uid_v = int(p[b"uid"])
                    if b"gid" in p:
                        gid_v = int(p[b"gid"])
                    if b"mtime" in p:
                        mtime_v = float(p[b"mtime"])
                except ValueError:
                    raise FormatError(f"bad number in the PAX header of the member at offset {off}") from None
                if size_v < 0:
                    raise FormatError(f"negative size in the PAX header at offset {off}")
                for k, v in p.items():
                    if k.startswith(b"SCHILY.xattr."):
                        xattrs = xattrs or {}
                        xattrs[k[13:].decode("utf-8", "surrogateescape")] = v
                    elif k.startswith(b"LIBARCHIVE.xattr."):
                        xattrs = xattrs or {}
                        key = urllib.parse.unquote_to_bytes(k[17:]).decode("utf-8", "surrogateescape")
                        try:
                            xattrs[key] = base64.b64decode(v)
                        except ValueError:
                            xattrs[key] = v
                    elif k.startswith(b"GNU.sparse."):
                        sparse = True
                pending = {}
            long_name = long_link = None

            if t not in _KNOWN:
                t = FILE  # POSIX: an unknown type is read as a regular file
            # Only regular files carry data in the stream; other kinds' size fields are ignored.
            data_len = size_v if t == FILE else 0
            end = data_off + data_len
            norm = normalize(full)
            if norm is None:
                idx.skipped.append(f"{full!r}: climbs above the root")
            else:
                i = len(names)
                names.append(norm)
                kinds.append(t)
                modes.append(_num(mode) & 0o7777)
                uids.append(uid_v if 0 <= uid_v < 1 << 64 else 0)
                gids.append(gid_v if 0 <= gid_v < 1 << 64 else 0)
                sizes.append(data_len)
                mtimes.append(mtime_v)
                offsets.append(data_off)
                if t in (HARDLINK, SYMLINK):
                    idx.links[i] = link
                elif t in (CHAR, BLOCKDEV):
                    idx.devices[i] = (_num(devmajor), _num(devminor))
                if xattrs:
                    idx.xattrs[i] = xattrs
                if sparse:
                    idx.broken[i] = "sparse tar members are not supported"
                if end > total:
                    idx.broken[i] = "the member's data is cut off (truncated archive)"
            if end > total:
                raise TruncatedError(f"member {full[-80:]!r} at offset {off} runs past the end of the data")
            off = data_off + (data_len + 511 & ~511)
            if progress is not None and off >= next_progress:
                progress(off, total)
                next_progress = off + (64 << 20)
    except FormatError as e:
        idx.error = str(e)
        if not names and off == 0:
            raise
    idx.end = off
    if progress is not None:
        progress(min(off, total), total)
    return idx


def iter_members(idx: MemberIndex) -> Iterator[int]:
    """Yield member numbers in archive order."""
    return iter(range(len(idx.names)))
