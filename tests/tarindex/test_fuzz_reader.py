"""Property tests: the tar reader (and the trees built on it) on mutated tars gives an index or an ImgfsError."""

from __future__ import annotations

import tarfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fuzz_derandomize, fuzz_examples
from imgfs.errors import ImgfsError
from imgfs.tarindex import meta_digest, scan
from imgfs.tree import layer_tree, merged_tree
from tarmaker import END, BytesSource, D, F, H, header, member, pad, pax, tar_of


def _seeds() -> list[bytes]:
    """Valid tars to mutate: GNU and PAX made by tarfile, and one made header by header."""
    long = "d" * 120 + "/" + "n" * 130
    link = tarfile.TarInfo("sym")
    link.type, link.linkname = tarfile.SYMTYPE, "t" * 150
    fifo = tarfile.TarInfo("fifo")
    fifo.type = tarfile.FIFOTYPE
    dev = tarfile.TarInfo("dev/null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    members = [D("etc"), F("etc/a", b"A" * 700), H("etc/h", "etc/a"), (link, None), (fifo, None), (dev, None),
               F(long, b"long"), F("etc/.wh.gone"), D("data"), F("data/.wh..wh..opq"), F("x", b"x" * 1500)]
    hand = (pax({b"path": b"p" * 200, b"mtime": b"12.5", b"SCHILY.xattr.user.k": b"\xff"})
            + member(b"short", b"data")
            + member(b"././@LongLink", b"L" * 300 + b"\0", typeflag=b"L") + member(b"x", b"y")
            + header(b"S", typeflag=b"S", size=0) + END)
    return [tar_of(members, fmt) for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)] + [hand, _sparse_seed()]


def _sparse_seed() -> bytes:
    """One sparse member of each format: GNU 'S' (with an extension block), PAX 0.0, 0.1 and 1.0."""
    gnu = bytearray(header(b"gnu", typeflag=b"S", size=1024))
    gnu[386:434] = b"%011o\0%011o\0" % (100, 512) + b"%011o\0%011o\0" % (900, 256)
    gnu[482], gnu[483:495] = 1, b"%011o\0" % 3000
    gnu[148:156] = b" " * 8
    gnu[148:156] = b"%06o\0 " % sum(gnu)
    ext = bytearray(512)
    ext[:24] = b"%011o\0%011o\0" % (2000, 256)
    data = bytes(range(256)) * 4
    recs = {b"GNU.sparse.size": b"4000", b"GNU.sparse.name": b"p01", b"GNU.sparse.map": b"10,300,3000,212"}
    v10 = {b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0", b"GNU.sparse.name": b"p10",
           b"GNU.sparse.realsize": b"5000"}
    return (bytes(gnu) + bytes(ext) + data
            + pax([(b"GNU.sparse.size", b"700"), (b"GNU.sparse.offset", b"5"), (b"GNU.sparse.numbytes", b"200"),
                   (b"GNU.sparse.offset", b"600"), (b"GNU.sparse.numbytes", b"100")]) + member(b"p00", data[:300])
            + pax(recs) + member(b"GNUSparseFile.7/p01", data[:512])
            + pax(v10) + member(b"GNUSparseFile.7/p10", pad(b"2\n0\n100\n4000\n50\n") + data[:150])
            + member(b"after", b"x") + END)


SEEDS = _seeds()
FIELDS = {"name": (0, 100), "mode": (100, 8), "uid": (108, 8), "size": (124, 12), "mtime": (136, 12),
          "type": (156, 1), "link": (157, 100), "magic": (257, 8), "prefix": (345, 155)}


def _fix_checksum(data: bytearray, at: int) -> None:
    """Give the header at `at` a valid checksum, so the mutation reaches the code behind the checksum test."""
    block = data[at:at + 512]
    if len(block) < 512:
        return
    block[148:156] = b" " * 8
    data[at + 148:at + 156] = f"{sum(block):06o}".encode() + b"\0 "


@st.composite
def mutated_tars(draw: st.DrawFn) -> bytes:
    """A valid tar with a few byte-level or field-level mutations (checksums repaired or not)."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "field", "field", "field"]))
        n = len(data)
        if op == "flip" and n:
            at = draw(st.integers(0, n - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, n)):]
        elif op == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=600))
        elif op == "delete" and n:
            at = draw(st.integers(0, n - 1))
            del data[at:at + draw(st.integers(1, 600))]
        elif op == "field" and n >= 512:
            at = 512 * draw(st.integers(0, n // 512 - 1))
            off, width = FIELDS[draw(st.sampled_from(sorted(FIELDS)))]
            value = draw(st.one_of(
                st.binary(min_size=width, max_size=width),
                st.integers(0, 8**(width - 1) - 1).map(lambda v, w=width: f"{v:0{w - 1}o}".encode() + b"\0"),
                st.integers(0, 2**(8 * (width - 1)) - 1).map(lambda v, w=width: bytes([0x80])
                                                              + v.to_bytes(w - 1, "big") if w > 1 else b"\x80"),
                st.sampled_from([b"x", b"g", b"L", b"K", b"S", b"1", b"2", b"5", b"7", b"\0"]).map(
                    lambda t, w=width: t.ljust(w, b"\0")),
            ))
            data[at + off:at + off + width] = value[:width]
            if draw(st.booleans()):
                _fix_checksum(data, at)
    return bytes(data)


def _exercise(data: bytes) -> None:
    """Scan, then build both kinds of tree and read every file, as a mount would."""
    src = BytesSource(data)
    try:
        idx = scan(src)
    except ImgfsError:
        return
    assert len(idx.names) == len(idx.kinds) == len(idx.sizes) == len(idx.offsets) == len(idx.mtimes)
    for i in range(len(idx)):
        assert idx.sizes[i] >= 0 and idx.offsets[i] % 512 == 0
        assert idx.names[i] == b"" or not (idx.names[i].startswith(b"/") or b"//" in idx.names[i])
        assert b".." not in idx.names[i].split(b"/")
    if idx.meta_digest is not None:  # what the scan vouches for, the check recomputes from the index alone
        assert meta_digest(idx, src) == idx.meta_digest
        assert idx.error is None and not idx.skipped
    tree, refs = merged_tree([idx], [src])
    for t in (tree, layer_tree(0, [idx], [src], lambda: refs)):
        for path, ref in t.walk():
            e = t.entry_for(path, ref)
            if e.kind == "file":
                try:
                    got = b"".join(t.read_all(ref))
                except ImgfsError:
                    continue
                assert len(got) == e.size
            t.resolve(path)


@settings(max_examples=fuzz_examples(300), deadline=2000, derandomize=fuzz_derandomize(),
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated_tars())
def test_mutated_tars_give_an_index_or_an_imgfs_error(data: bytes) -> None:
    _exercise(data)


@settings(max_examples=fuzz_examples(100), deadline=2000, derandomize=fuzz_derandomize())
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_give_an_index_or_an_imgfs_error(data: bytes) -> None:
    _exercise(data)


def test_seeds_are_valid() -> None:
    # The mutations start from archives the reader accepts whole.
    for seed in SEEDS:
        idx = scan(BytesSource(seed))
        assert idx.error is None and len(idx) >= 3
        assert idx.meta_digest is not None and meta_digest(idx, BytesSource(seed)) == idx.meta_digest
