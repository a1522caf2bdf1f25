"""Sparse members (GNU 'S', PAX 0.0 / 0.1 / 1.0) made by GNU tar: real names, real sizes, holes read as zeros."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest

import imgfs
from imgfs.errors import FormatError
from imgfs.extract import extract
from imgfs.tarindex.sparse import MAX_SPARSE_SEGMENTS, MAX_SPARSE_SEGMENTS_PER_LAYER
from tarmaker import END, ArchiveBuilder, BytesSource, header, index_of, member, merge, pad, pax

VERSIONS = ["gnu", "0.0", "0.1", "1.0"]
MiB = 1 << 20


def _sparse_files(root: Path) -> dict[str, bytes]:
    """Files with holes of every shape (made sparse on disk with truncate/seek), name -> content."""
    root.mkdir()
    shapes: dict[str, list[tuple[int, bytes]]] = {
        "holes": [(k * MiB + 3 * 4096, os.urandom(5000)) for k in range(10)],  # 10 MiB, 10 islands
        "tail_hole": [(0, b"head" * 1000)],
        "head_hole": [(3 * MiB, b"tail" * 1000)],
        "all_hole": [],
        "many": [(k * 8192, b"%05d" % k) for k in range(300)],  # GNU extension blocks, a 1.0 map of blocks
        "dense": [(0, os.urandom(70_000))],
        "dir/nested": [(MiB, b"x")],
    }
    sizes = {"tail_hole": 3 * MiB, "all_hole": MiB, "head_hole": 3 * MiB + 4000, "holes": 10 * MiB,
             "many": 300 * 8192, "dense": 70_000, "dir/nested": 2 * MiB}
    out = {}
    for name, parts in shapes.items():
        path = root / name
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(sizes[name])
            for off, data in parts:
                fh.seek(off)
                fh.write(data)
        out[name] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """The files, and one image archive per sparse format whose one layer GNU tar made of them."""
    if shutil.which("tar") is None or b"GNU tar" not in subprocess.run(["tar", "--version"],
                                                                        capture_output=True).stdout:
        pytest.skip("needs GNU tar (--sparse)")
    top = tmp_path_factory.mktemp("sparse")
    files = _sparse_files(top / "src")
    for v in VERSIONS:
        fmt = ["--format=gnu"] if v == "gnu" else ["--format=posix", f"--sparse-version={v}"]
        layer = subprocess.run(["tar", *fmt, "--sparse", "-cf", "-", "-C", str(top / "src"), "."],
                               capture_output=True, check=True).stdout
        assert b"GNUSparseFile" in layer or v in ("gnu", "0.0")  # the stored names imgfs must not show
        b = ArchiveBuilder()
        b.oci_index([b.oci_image([layer])])
        b.save(top / f"{v}.tar")
    return top, files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("version", VERSIONS)
def test_sparse_members_are_the_files_they_were_made_from(made: tuple[Path, dict[str, bytes]], version: str,
                                                          tmp_path: Path) -> None:
    top, files = made
    for attempt in ("cold", "cached"):  # the second open takes the index, sparse maps included, from the cache
        with imgfs.open_archive(top / f"{version}.tar", cache_dir=tmp_path / "cache") as a:
            tree = a.images[0].merged()
            got = {p.decode(): tree.entry_for(p, r) for p, r in tree.walk() if tree.entry_for(p, r).kind == "file"}
            assert sorted(got) == sorted(files), attempt  # real names, no GNUSparseFile.N/
            for name, content in files.items():
                assert got[name].size == len(content), (name, attempt)
                assert _sha(b"".join(tree.read_all(got[name].ref))) == _sha(content), (name, attempt)
                # reads at odd offsets across holes and segments, as a mount makes them
                for off in (0, 4095, 3 * 4096 + 4999, len(content) - 7, len(content)):
                    assert tree.read(got[name].ref, off, 9000) == content[off:off + 9000], (name, off)
                if tree.data_extents(got[name].ref) is not None:
                    assert tree.extent(got[name].ref) is None  # never zero-copy from the stored bytes
            assert len(tree.data_extents(got["holes"].ref) or []) == 10  # GNU tar did store it sparse
            out = tmp_path / attempt
            stats = extract(tree, [b""], out, preserve_owner=False)
            assert not stats.errors
    for name, content in files.items():
        assert _sha((out / name).read_bytes()) == _sha(content)
        src = os.stat(top / "src" / name)
        if src.st_blocks * 512 < src.st_size // 2:  # the file system keeps holes: so must the extraction
            assert os.stat(out / name).st_blocks <= src.st_blocks + 16, name


def _pax_sparse(name: bytes, real: int, records: dict[bytes, bytes], stored: bytes) -> bytes:
    """A PAX 0.x sparse member: its records and `stored` as its data."""
    recs = {b"GNU.sparse.size": b"%d" % real, b"GNU.sparse.name": name} | records
    return pax(recs) + member(b"GNUSparseFile.1/" + name, stored)


def _map_01(pairs: list[int]) -> dict[bytes, bytes]:
    return {b"GNU.sparse.map": b",".join(b"%d" % v for v in pairs)}


def _pax_10(name: bytes, real: int, map_text: bytes, stored: bytes) -> bytes:
    recs = {b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0", b"GNU.sparse.name": name,
            b"GNU.sparse.realsize": b"%d" % real}
    return pax(recs) + member(b"GNUSparseFile.1/" + name, pad(map_text) + stored)


def _gnu_old(name: bytes, real: int, entries: int, extension_blocks: int) -> bytes:
    """A GNU 'S' member whose map goes on over `extension_blocks` blocks of `entries`-entry runs (1 byte each)."""
    hdr = bytearray(header(name, typeflag=b"S", size=0))
    hdr[483:495] = b"%011o\0" % real
    hdr[482] = 1
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    ext = bytearray(512)
    for k in range(entries):
        ext[24 * k:24 * k + 24] = b"%011o\0%011o\0" % (2 * k, 0)
    ext[504] = 1
    last = bytearray(ext)
    last[504] = 0
    return bytes(hdr) + bytes(ext) * (extension_blocks - 1) + bytes(last)


@pytest.mark.parametrize("shape", ["0.0", "0.1", "1.0", "gnu"])
def test_a_million_segment_map_is_refused_clearly_in_bounded_memory(shape: str) -> None:
    n = 1_000_000
    if shape == "0.1":
        bad = _pax_sparse(b"big", 2 * n, {b"GNU.sparse.map": b"0,1," * (n - 1) + b"0,1"}, b"")
    elif shape == "0.0":
        bad = pax({b"GNU.sparse.size": b"%d" % (2 * n)}
                  | {b"GNU.sparse.offset": b"0", b"GNU.sparse.numbytes": b"1"}) + member(b"big")
        # 400k records of the same key pair, under the 16 MiB a header may have: written out by hand
        body = b"23 GNU.sparse.offset=0\n25 GNU.sparse.numbytes=1\n" * 200_000
        bad = member(b"PaxHeader", body, typeflag=b"x") + member(b"big")
    elif shape == "1.0":
        bad = _pax_10(b"big", 2 * n, b"%d\n" % n + b"0\n1\n" * 1000, b"")
    else:
        bad = _gnu_old(b"big", 2 * n, 21, n // 21 + 1)
    data = member(b"before", b"1") + bad + member(b"after", b"2") + END
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        idx = index_of(data)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 30 and peak < 48 * MiB, (elapsed, peak)
    if shape == "0.0":  # more records than a PAX header may hold: the layer stops there, and says why
        assert "records" in (idx.error or "") and list(idx.names) == [b"before"]
        return
    assert list(idx.names) == [b"before", b"big", b"after"] and idx.error is None
    assert f"more than {MAX_SPARSE_SEGMENTS}" in idx.broken[1] and 1 not in idx.sparse
    tree = merge(data)
    with pytest.raises(FormatError, match="segments"):
        b"".join(tree.read_all(tree.lookup("big")))
    assert b"".join(tree.read_all(tree.lookup("after"))) == b"2"


@pytest.mark.parametrize("pairs,stored,why", [
    ([10, 5, 0, 5], b"x" * 10, "out of order"),
    ([0, 5, 3, 5], b"x" * 10, "out of order"),  # overlapping
    ([0, 5, 98, 5], b"x" * 10, "outside the file"),
    ([0, 5, 10, 50], b"x" * 10, "only 10 are stored"),
    ([0, 5, 10], b"x" * 10, "odd number"),
])
def test_a_bad_map_makes_its_member_an_error_not_other_bytes(pairs: list[int], stored: bytes, why: str) -> None:
    data = _pax_sparse(b"f", 100, _map_01(pairs), stored) + member(b"after", b"2") + END
    idx = index_of(data)
    assert list(idx.names) == [b"f", b"after"] and why in idx.broken[0]
    tree = merge(data)
    with pytest.raises(FormatError):
        b"".join(tree.read_all(tree.lookup("f")))


def test_a_map_in_the_data_may_span_blocks_and_the_segments_follow_it() -> None:
    pairs = [v for k in range(100) for v in (k * 1000, 3)]
    text = b"100\n" + b"".join(b"%d\n" % v for v in pairs)
    assert len(text) > 512
    stored = b"".join(b"%03d" % k for k in range(100))
    data = _pax_10(b"f", 100_000, text, stored) + END
    tree = merge(data)
    want = bytearray(100_000)
    for k in range(100):
        want[k * 1000:k * 1000 + 3] = b"%03d" % k
    assert b"".join(tree.read_all(tree.lookup("f"))) == bytes(want)


def test_the_sparse_maps_of_a_layer_are_bounded_in_all() -> None:
    per = MAX_SPARSE_SEGMENTS
    members = [_pax_sparse(b"f%d" % k, 2 * per, _map_01([v for s in range(per) for v in (2 * s, 1)]), b"x" * per)
               for k in range(MAX_SPARSE_SEGMENTS_PER_LAYER // per + 1)]
    idx = index_of(b"".join(members) + END)
    assert "segments in all" in (idx.error or "")
    assert len(idx) == MAX_SPARSE_SEGMENTS_PER_LAYER // per + 1  # those up to the limit stay, then it stops


def test_an_empty_sparse_member_reads_as_zeros_of_its_real_size() -> None:
    data = _pax_sparse(b"z", 5000, _map_01([5000, 0]), b"") + END
    tree = merge(data)
    assert b"".join(tree.read_all(tree.lookup("z"))) == bytes(5000)
    assert tree.read(tree.lookup("z"), 4990, 100) == bytes(10)
    assert BytesSource(data).size == len(data)
