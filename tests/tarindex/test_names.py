"""Compact member names: what goes in comes out, by number, in order, and from the cache's parts."""

from __future__ import annotations

from array import array

import pytest

from imgfs.tarindex.names import Names

SAMPLE = [b"", b"etc", b"etc/passwd", b"usr/lib/x86_64-linux-gnu/libc.so.6", b"etc/group", b"top", b"usr/lib/a",
          b"caf\xc3\xa9/\xff\xfe", b"usr/lib"]


def names_of(items: list[bytes]) -> Names:
    out = Names()
    for n in items:
        out.append(n)
    return out


def test_names_read_back_by_number_slice_and_iteration() -> None:
    names = names_of(SAMPLE)
    assert len(names) == len(SAMPLE)
    assert [names[i] for i in range(len(SAMPLE))] == SAMPLE == list(names) == names[:]
    assert names[-1] == b"usr/lib" and names[2:4] == SAMPLE[2:4] and names == SAMPLE
    assert b"etc/group" in names and names.index(b"top") == 5 and b"etc/shadow" not in names
    assert [names.base(i) for i in range(len(SAMPLE))] == [n.rpartition(b"/")[2] for n in SAMPLE]
    assert names.dirs.count(b"usr/lib") == 1 and names.dirs.count(b"etc") == 1  # each directory held once
    with pytest.raises(IndexError):
        names[len(SAMPLE)]


def test_appending_after_a_read_keeps_every_name() -> None:
    names = names_of(SAMPLE[:4])
    assert names[3] == SAMPLE[3]  # the blob is made immutable here
    for n in SAMPLE[4:]:
        names.append(n)
    assert list(names) == SAMPLE and names.base(8) == b"lib"


def test_parts_round_trip_and_inconsistent_parts_are_refused() -> None:
    names = names_of(SAMPLE)
    back = Names.of(list(names.dirs), array("i", names.dir_of), array("I", names.bounds), names.blob)
    assert back == names
    with pytest.raises(ValueError):
        Names.of(list(names.dirs), array("i", names.dir_of), array("I", names.bounds), names.blob + b"x")
    with pytest.raises(ValueError):
        Names.of(list(names.dirs)[:1], array("i", names.dir_of), array("I", names.bounds), names.blob)
    with pytest.raises(ValueError):
        Names.of(list(names.dirs), array("i", names.dir_of)[1:], array("I", names.bounds), names.blob)
