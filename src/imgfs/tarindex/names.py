"""Member names held compactly: each directory once, each last component in one shared blob."""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import overload


class Names(Sequence[bytes]):
    """A tar stream's member names, about 8 bytes a member plus its last component.

    A list of bytes objects costs ~50 bytes a name over its text, and full paths repeat their directory:
    for 348k members that was 48 MB; here the same names take about 9.
    """

    __slots__ = ("dirs", "dir_of", "bounds", "_blob", "_tail", "_dir_ids")

    def __init__(self) -> None:
        self.dirs: list[bytes] = []  # distinct parent paths (b"" for names at the top)
        self.dir_of = array("i")  # member -> its parent's position in dirs
        self.bounds = array("I", [0])  # member i's last component is blob[bounds[i]:bounds[i + 1]]
        self._blob = b""
        self._tail = bytearray()  # appended, not yet in _blob (so that reads slice bytes, not a bytearray)
        self._dir_ids: dict[bytes, int] | None = {}

    @classmethod
    def of(cls, dirs: list[bytes], dir_of: array, bounds: array, blob: bytes) -> Names:
        """Names from their parts, as store.load_index reads them (checked for consistency)."""
        self = cls()
        if len(dir_of) + 1 != len(bounds) or bounds[0] != 0 or bounds[-1] != len(blob) or (
                dir_of and not 0 <= min(dir_of) <= max(dir_of) < len(dirs)):
            raise ValueError("inconsistent names")
        self.dirs, self.dir_of, self.bounds, self._blob, self._dir_ids = dirs, dir_of, bounds, blob, None
        return self

    def append(self, name: bytes) -> None:
        """Add a normalised name (b'' is the root)."""
        d, _, b = name.rpartition(b"/")
        ids = self._dir_ids
        if ids is None:
            ids = self._dir_ids = {p: k for k, p in enumerate(self.dirs)}
        k = ids.get(d)
        if k is None:
            k = ids[d] = len(self.dirs)
            self.dirs.append(d)
        self._tail += b
        end = self.bounds[-1] + len(b)
        if end > 0xFFFFFFFF and self.bounds.typecode == "I":
            self.bounds = array("q", self.bounds)
        self.dir_of.append(k)
        self.bounds.append(end)

    def adopt(self, text: bytearray) -> None:
        """Take the last components a scan appended itself (to a Names that had none) as the blob."""
        if self._blob or self._tail:
            raise ValueError("adopt() is for a Names filled by a scan")
        self._blob, self._dir_ids = bytes(text), None

    @property
    def blob(self) -> bytes:
        """Every last component, end to end."""
        if self._tail:
            self._blob += self._tail
            self._tail = bytearray()
            self._dir_ids = None  # only appends need it (rebuilt then)
        return self._blob

    def base(self, i: int) -> bytes:
        """The last component of member i's name."""
        if self._tail:
            self.blob  # noqa: B018 - moves what was appended into the blob
        b = self.bounds
        return self._blob[b[i]:b[i + 1]]

    def __len__(self) -> int:
        return len(self.dir_of)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self.dir_of)
        if not 0 <= i < len(self.dir_of):
            raise IndexError("member number out of range")
        d = self.dirs[self.dir_of[i]]
        b = self.base(i)
        return d + b"/" + b if d else b

    def __iter__(self) -> Iterator[bytes]:
        dirs, bounds, blob = self.dirs, self.bounds, self.blob
        for i, k in enumerate(self.dir_of):
            d = dirs[k]
            b = blob[bounds[i]:bounds[i + 1]]
            yield d + b"/" + b if d else b

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Names | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Names({list(self)!r})"
