"""Tree access: lookups, listings, walks and reads at offsets, never past a file's own bytes."""

from __future__ import annotations

import random
import stat

import pytest

from imgfs.errors import ImgfsError, NotFoundError
from imgfs.tree import Tree, layer_of, layer_refs, make_ref, member_of
from tarmaker import D, F, S, merge

CONTENT = random.Random(3).randbytes(5000)
NEIGHBOUR = b"secret of another file " * 50


@pytest.fixture(scope="module")
def tree() -> Tree:
    """A small tree: the file under test sits between two others in the tar."""
    return merge([F("before", NEIGHBOUR), D("dir", mode=0o750), F("dir/data", CONTENT, mode=0o640),
                  F("after", NEIGHBOUR), S("dir/link", "data"), F("empty")])


@pytest.mark.parametrize("offset,size", [(0, 5000), (0, 10_000), (1, 1), (4095, 2), (4999, 10), (5000, 1),
                                         (123_456, 10), (0, 0), (10, -3)])
def test_read_at_offsets(tree: Tree, offset: int, size: int) -> None:
    got = tree.read(tree.lookup("dir/data"), offset, size)
    assert got == CONTENT[offset:offset + max(size, 0)]


@pytest.mark.parametrize("offset", [-1, -512, -1024])
def test_negative_offset_never_reads_outside_the_file(tree: Tree, offset: int) -> None:
    try:
        got = tree.read(tree.lookup("dir/data"), offset, 600)
    except (ValueError, ImgfsError):
        return
    assert CONTENT.startswith(got) or got == b"", got[:40]


def test_read_all_in_small_chunks(tree: Tree) -> None:
    assert b"".join(tree.read_all(tree.lookup("dir/data"), chunk=7)) == CONTENT
    assert b"".join(tree.read_all(tree.lookup("empty"))) == b""


def test_entries_and_stat_modes(tree: Tree) -> None:
    e = tree.entry("/dir//data/")
    assert (e.kind, e.size, e.mode, stat.S_ISREG(e.st_mode), stat.S_IMODE(e.st_mode)) == ("file", 5000, 0o640, True,
                                                                                         0o640)
    assert stat.S_ISDIR(tree.entry("dir").st_mode) and stat.S_ISLNK(tree.entry("dir/link").st_mode)
    assert tree.entry("dir/link").size == len(b"data")
    assert tree.entry("nothing") is None and tree.lookup("dir/nothing") is None
    assert tree.entry("").ino == 1 and len({tree.entry(p).ino for p in ("before", "after", "dir/data")}) == 3


def test_listdir_and_walk(tree: Tree) -> None:
    assert tree.listdir("/") == [b"after", b"before", b"dir", b"empty"]
    assert tree.listdir("dir") == [b"data", b"link"]
    with pytest.raises(NotFoundError):
        tree.listdir("dir/data")
    with pytest.raises(NotFoundError):
        tree.listdir("missing")
    assert [p for p, _ in tree.walk("dir")] == [b"dir", b"dir/data", b"dir/link"]
    assert list(tree.walk("missing")) == []


def test_dotdot_in_lookups_stays_inside(tree: Tree) -> None:
    assert tree.lookup("../../dir/data") == tree.lookup("dir/data")
    assert tree.lookup("dir/../before") == tree.lookup("before")


def test_node_table_grows_and_forgets_removed_nodes() -> None:
    # A tree made with no size hint rehashes its (parent, name) table several times while it fills.
    t = merge([F("seed", b"x")])
    small = len(t.slots)

    def add(parent: int, name: bytes, ref: int) -> int:
        t.extra.append(name)  # names set by hand: -2 - k is t.extra[k]
        return t.add(parent, name, -1 - len(t.extra), ref)

    dirs = [add(0, b"d%d" % k, -2 - k) for k in range(50)]
    files = {(d, b"f%03d" % j): add(d, b"f%03d" % j, 0) for d in dirs for j in reversed(range(100))}
    assert len(t.slots) > small and len(t) == 1 + 1 + 50 + 5000
    assert all(t.child(d, name) == n for (d, name), n in files.items())
    assert t.child(dirs[3], b"nope") is None and t.child(0, b"f000") is None and t.child(0, b"seed") == 1
    t.parents[files[(dirs[7], b"f042")]] = -2  # removed, as a merge removes: the slot stays, the name is gone
    assert t.child(dirs[7], b"f042") is None and t.child(dirs[7], b"f043") == files[(dirs[7], b"f043")]
    t.finish()
    assert [t.name(c) for c in t.kids(dirs[7])][:3] == [b"f000", b"f001", b"f002"]
    assert len(list(t.kids(dirs[7]))) == 99 and t.path(files[(dirs[9], b"f005")]) == b"d9/f005"


def test_first_listings_from_many_threads_agree_and_are_sorted() -> None:
    # Children are put in name order on a directory's first listing, under a lock: threads listing the
    # same directories at once must each see every child, in order.
    import threading

    names = [f"d{k % 4}/f{k:05d}" for k in reversed(range(4000))]  # tar order: reversed
    t = merge([F(n, b"") for n in names])
    want = {d: sorted(n.rpartition("/")[2].encode() for n in names if n.startswith(d + "/")) for d in
            ("d0", "d1", "d2", "d3")}
    got: list[dict] = []
    start = threading.Barrier(8)

    def lister() -> None:
        start.wait()
        got.append({d: t.listdir(d) for d in ("d3", "d1", "d0", "d2")})

    threads = [threading.Thread(target=lister) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == 8 and all(g == want for g in got)
    assert [p for p, _ in t.walk("d2")][:3] == [b"d2", b"d2/f00002", b"d2/f00006"]


def test_a_reference_names_its_layer_and_member_through_the_tree() -> None:
    t = merge([F("a", b"lower")], [F("b", b"upper"), S("c", "b")])
    ref = t.lookup("c")
    assert layer_of(ref) == 1 and ref in layer_refs(1) and ref not in layer_refs(0)
    idx, i = t.member(ref)  # type: ignore[misc]
    assert idx.names[i] == b"c" and make_ref(layer_of(ref), member_of(ref)) == ref
    assert t.link_target(ref) == b"b" and t.link_target(t.lookup("a")) == b""
    assert t.member(t.lookup("a")) is not None and layer_of(t.lookup("a")) == 0
    assert t.member(-2) is None and t.member(make_ref(7, 0)) is None and t.member(make_ref(1, 99)) is None
