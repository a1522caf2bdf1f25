"""Sparse tar members (GNU 'S', PAX 0.0 / 0.1 / 1.0): their maps, and reads with the holes as zeros.

A sparse member stores only its data segments, one after another; the map says where each lies in the
real file. Everything else reads as zeros. Maps come from hostile archives, so each is checked (sorted,
inside the file, no more stored bytes than there are) and bounded in size before anything is kept.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator

from ..errors import FormatError, TruncatedError
from .source import Source

BLOCK = 512
# The most segments one member may have: a million-segment map is refused, not held (24 bytes a segment).
MAX_SPARSE_SEGMENTS = 1 << 16
MAX_SPARSE_SEGMENTS_PER_LAYER = 1 << 20  # and all those of one layer: at most 24 MiB of maps
_DIGITS = 20  # a decimal number in a map: 2^63 has 19 digits
_GNU_ENTRY = 24  # an old GNU map entry: offset and length, 12 octal bytes each


class SparseError(FormatError):
    """A sparse map that is malformed or too large: the member is listed, but reads as an I/O error."""


class SparseMap:
    """Where a sparse member's stored segments lie: in the real file, and in the stream (`stored` bytes from
    `data_at`, which is the member's offset in its index: the map itself lies before it)."""

    __slots__ = ("data_at", "stored", "offsets", "lengths", "starts")

    def __init__(self, data_at: int, pairs: list[int] | array, real_size: int, stored: int) -> None:
        """Check a flat list of (offset, length) pairs against the file's real size and its stored bytes."""
        if len(pairs) % 2 or len(pairs) > 2 * MAX_SPARSE_SEGMENTS:
            raise SparseError(f"sparse map of more than {MAX_SPARSE_SEGMENTS} segments" if len(pairs) % 2 == 0
                              else "sparse map with an odd number of values")
        self.data_at, self.stored = data_at, stored
        self.offsets, self.lengths, self.starts = array("q"), array("q"), array("q")
        end = packed = 0
        for k in range(0, len(pairs), 2):
            off, length = pairs[k], pairs[k + 1]
            if not (end <= off and length >= 0 and off + length <= real_size):
                raise SparseError(f"sparse map segment {off},{length} is out of order or outside the file")
            if length:  # empty segments (GNU tar ends maps with one at the real size) hold nothing
                self.offsets.append(off)
                self.lengths.append(length)
                self.starts.append(packed)
            end, packed = off + length, packed + length
        if packed > stored:
            raise SparseError(f"sparse map holds {packed} bytes, but only {stored} are stored")

    def __len__(self) -> int:
        return len(self.offsets)

    def extents(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of each stored segment in the real file, in order."""
        return zip(self.offsets, self.lengths, strict=True)

    def read(self, src: Source, offset: int, length: int) -> bytes:
        """`length` bytes of the real file at `offset` (the caller keeps them inside it): zeros in holes."""
        end = offset + length
        out = bytearray(length)
        offs, lens, starts = self.offsets, self.lengths, self.starts
        k = max(bisect_right(offs, offset) - 1, 0)
        while k < len(offs) and offs[k] < end:
            lo, hi = max(offs[k], offset), min(offs[k] + lens[k], end)
            if lo < hi:
                out[lo - offset:hi - offset] = src.pread(self.data_at + starts[k] + lo - offs[k], hi - lo)
            k += 1
        return bytes(out)

    def flat(self) -> list[int]:
        """The map as numbers, for the cache: data_at, stored, then offset and length of each segment."""
        out = [self.data_at, self.stored]
        for off, length in self.extents():
            out += (off, length)
        return out

    @classmethod
    def from_flat(cls, values: list[int], real_size: int, end: int) -> SparseMap:
        """The map flat() gave (checked again, and to lie before `end`: a cache file is not trusted)."""
        data_at, stored = int(values[0]), int(values[1])
        if not 0 <= data_at <= data_at + stored <= end:
            raise SparseError("sparse map outside its stream")
        return cls(data_at, [int(v) for v in values[2:]], real_size, stored)


class SparseSource:
    """A sparse member as a Source: its real bytes, holes as zeros."""

    def __init__(self, parent: Source, sparse: SparseMap, size: int) -> None:
        self.parent = parent
        self.map = sparse
        self.base = sparse.data_at
        self.size = size

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, or TruncatedError past the end."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedError(f"read of {length} bytes at {offset} past the end of a {self.size}-byte member")
        return self.map.read(self.parent, offset, length)


def _number(text: bytes, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > _DIGITS:
        raise SparseError(f"bad number {text[:24]!r} in a {what}")
    return int(text)


def _octal(field: bytes) -> int | None:
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return None
    try:
        return int(text, 8)
    except ValueError:
        raise SparseError(f"bad number {text[:24]!r} in a GNU sparse header") from None


def gnu_old(src: Source, header: bytes, data_off: int, stored: int) -> tuple[int, int, SparseMap | None, str | None]:
    """An old GNU sparse member (type 'S'): (real size, end of its data, map or None, why not).

    Its map is in the header (4 entries) and in extension blocks after it (21 each), which the data follows.
    Raises TruncatedError when the extension blocks are cut off (like a header).
    """
    pairs: list[int] = []
    why = None

    def take(entries: bytes) -> None:
        nonlocal why
        for k in range(0, len(entries) - _GNU_ENTRY + 1, _GNU_ENTRY):
            off, length = _octal(entries[k:k + 12]), _octal(entries[k + 12:k + 24])
            if off is None:
                return
            if len(pairs) >= 2 * MAX_SPARSE_SEGMENTS:
                why = f"sparse map of more than {MAX_SPARSE_SEGMENTS} segments"
                return
            pairs.extend((off, length or 0))

    try:
        real_size = _octal(header[483:495]) or 0
        take(header[386:482])
    except SparseError as e:
        real_size, why = stored, str(e)
    extended, at = header[482], data_off
    while extended:  # every block is walked, even past a refused map: the data starts after the last
        if at + BLOCK > src.size:
            raise TruncatedError(f"GNU sparse extension header at offset {at} is cut short")
        block = src.pread(at, BLOCK)
        at += BLOCK
        if why is None:
            try:
                take(block[:504])
            except SparseError as e:
                why = str(e)
        extended = block[504]
    end = at + stored
    if why is not None:
        return real_size, end, None, why
    try:
        return real_size, end, SparseMap(at, pairs, real_size, stored), None
    except SparseError as e:
        return real_size, end, None, str(e)


def pax(src: Source, records: dict[bytes, bytes], data_off: int, stored: int,
        ) -> tuple[int, int, SparseMap | None, str | None]:
    """A PAX sparse member (GNU.sparse.* records, formats 0.0, 0.1, 1.0): (real size, end, map or None, why not)."""
    end = data_off + stored
    major = records.get(b"GNU.sparse.major")
    try:
        real_size = _number(records.get(b"GNU.sparse.realsize" if major else b"GNU.sparse.size", b""),
                            "PAX sparse size")
    except SparseError as e:
        return stored, end, None, str(e)
    try:
        if major is not None:
            if major.strip() != b"1" or records.get(b"GNU.sparse.minor", b"0").strip() != b"0":
                raise SparseError(f"PAX sparse format {major[:8]!r} is not known")
            pairs, at = _map_in_data(src, data_off, stored)
            return real_size, end, SparseMap(at, pairs, real_size, end - at), None
        text = records.get(b"GNU.sparse.map")  # 0.1: one record "offset,length,..."
        if text is None:
            text = records.get(MAP_00)  # 0.0: the offset and numbytes records, collected in order
        if text is None:
            raise SparseError("PAX sparse member without a map")
        if text.count(b",") >= 2 * MAX_SPARSE_SEGMENTS:
            raise SparseError(f"sparse map of more than {MAX_SPARSE_SEGMENTS} segments")
        pairs = [_number(v, "PAX sparse map") for v in text.split(b",")] if text else []
        return real_size, end, SparseMap(data_off, pairs, real_size, stored), None
    except SparseError as e:
        return real_size, end, None, str(e)


# _parse_pax collects PAX 0.0's repeated GNU.sparse.offset / numbytes records under this key, in order.
MAP_00 = b"GNU.sparse.map (0.0)"


def _map_in_data(src: Source, data_off: int, stored: int) -> tuple[list[int], int]:
    """PAX 1.0: the map opens the member's data as decimal lines (count, then offset and length pairs),
    padded to a block; the segments follow. Returns the pairs and where the segments start."""
    limit = min(stored, (2 * MAX_SPARSE_SEGMENTS + 1) * (_DIGITS + 1) + BLOCK)
    if data_off + stored > src.size:
        raise SparseError("the sparse map is cut off (truncated archive)")
    text = b""
    need = None
    while True:
        lines = text.split(b"\n")
        if need is None and len(lines) > 1:
            need = _number(lines[0], "PAX sparse map")
            if need > MAX_SPARSE_SEGMENTS:
                raise SparseError(f"sparse map of {need} segments, more than {MAX_SPARSE_SEGMENTS}")
        if need is not None and len(lines) > 2 * need + 1:
            break
        if len(text) >= limit:
            raise SparseError("the sparse map runs past its member's data")
        text += src.pread(data_off + len(text), min(BLOCK * 64, limit - len(text)))
    pairs = [_number(v, "PAX sparse map") for v in lines[1:2 * need + 1]]
    used = sum(len(v) + 1 for v in lines[:2 * need + 1])
    return pairs, data_off + (used + BLOCK - 1) // BLOCK * BLOCK
