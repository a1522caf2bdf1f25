"""The tar header scanner on synthetic archives: tarfile-made ones, compared with tarfile, and hand-made headers."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from imgfs.errors import FormatError, ImgfsError
from imgfs.tarindex import FileSource, MemberIndex, scan
from imgfs.tarindex.reader import MAX_PAX_RECORDS, MAX_XATTR_BYTES
from imgfs.tarindex.store import dump_index, load_index
from tarmaker import (
    END,
    BytesSource,
    F,
    base256,
    header,
    index_of,
    member,
    merge,
    pad,
    pax,
    pax_records,
    tar_of,
)

KIND_OF = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file", tarfile.LNKTYPE: "hardlink",
           tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.DIRTYPE: "dir",
           tarfile.FIFOTYPE: "fifo"}


def clean(raw: bytes) -> bytes:
    """A member name as rule 18 wants it, computed independently of imgfs: no './', '/', '//', '.' parts."""
    return b"/".join(p for p in raw.split(b"/") if p not in (b"", b"."))


def tarfile_view(data: bytes) -> list[dict]:
    """What CPython's tarfile reports for each member, in imgfs's terms (content included)."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
        for ti in tf:
            kind = KIND_OF[ti.type]
            rec = {"name": clean(ti.name.encode("utf-8", "surrogateescape")), "kind": kind,
                   "size": ti.size if kind == "file" else 0, "mode": ti.mode, "uid": ti.uid, "gid": ti.gid,
                   "mtime": ti.mtime}
            if kind in ("hardlink", "symlink"):
                rec["link"] = ti.linkname.encode("utf-8", "surrogateescape")
            if kind in ("char", "block"):
                rec["dev"] = (ti.devmajor, ti.devminor)
            xa = {k[13:]: v.encode("utf-8", "surrogateescape") for k, v in ti.pax_headers.items()
                  if k.startswith("SCHILY.xattr.")}
            if xa:
                rec["xattrs"] = xa
            if kind == "file":
                rec["data"] = tf.extractfile(ti).read()
            out.append(rec)
    return out


def imgfs_view(data: bytes, idx: MemberIndex | None = None) -> list[dict]:
    """The same records from imgfs's index, content read through the source at the recorded offsets."""
    idx = idx if idx is not None else index_of(data)
    src = BytesSource(data)
    out = []
    for i in range(len(idx)):
        kind = idx.kind_name(i)
        rec = {"name": idx.names[i], "kind": kind, "size": idx.sizes[i], "mode": idx.modes[i], "uid": idx.uids[i],
               "gid": idx.gids[i], "mtime": idx.mtime(i)}
        if kind in ("hardlink", "symlink"):
            rec["link"] = idx.links[i]
        if kind in ("char", "block"):
            rec["dev"] = idx.devices[i]
        if i in idx.xattrs:
            rec["xattrs"] = idx.xattrs[i]
        if kind == "file":
            rec["data"] = src.pread(idx.offsets[i], idx.sizes[i])
        out.append(rec)
    return out


def one(data: bytes) -> dict:
    """The single member imgfs finds in `data`."""
    view = imgfs_view(data)
    assert len(view) == 1, view
    return view[0]


def _every_kind() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """One member of every entry type, with distinctive attributes."""
    def info(name: str, kind: bytes, **kw: object) -> tarfile.TarInfo:
        """A TarInfo of `kind` with attributes set from keywords."""
        ti = tarfile.TarInfo(name)
        ti.type = kind
        for k, v in kw.items():
            setattr(ti, k, v)
        return ti

    return [
        (info("d", tarfile.DIRTYPE, mode=0o1777, uid=1, gid=2, mtime=1_700_000_000), None),
        (info("d/file", tarfile.REGTYPE, size=5, mode=0o4755, uid=1000, gid=1000, mtime=1), b"hello"),
        (info("d/hard", tarfile.LNKTYPE, linkname="d/file"), None),
        (info("d/sym", tarfile.SYMTYPE, linkname="../elsewhere", mode=0o777), None),
        (info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
        (info("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660, gid=6), None),
        (info("run/fifo", tarfile.FIFOTYPE, mode=0o600), None),
        (info("empty", tarfile.REGTYPE, size=0, mode=0), b""),
        (info("contig", tarfile.CONTTYPE, size=3), b"abc"),  # type '7' is a regular file
    ]


# -- agreement with tarfile -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
def test_every_entry_type_agrees_with_tarfile(fmt: int) -> None:
    data = tar_of(_every_kind(), fmt)
    assert imgfs_view(data) == tarfile_view(data)
    assert [r["kind"] for r in imgfs_view(data)] == ["dir", "file", "hardlink", "symlink", "char", "block", "fifo",
                                                     "file", "file"]


def test_unknown_type_flag_is_a_regular_file() -> None:
    # POSIX: a reader treats an unrecognised type as a regular file, data included.
    data = member(b"odd", b"payload", typeflag=b"Z") + member(b"next", b"n") + END
    view = imgfs_view(data)
    assert [(r["name"], r["kind"], r["data"]) for r in view] == [(b"odd", "file", b"payload"), (b"next", "file", b"n")]


def test_non_file_sizes_carry_no_data() -> None:
    # A symlink header with a size field: only regular files have data in the stream (the next header follows).
    data = header(b"link", typeflag=b"2", linkname=b"t", size=0) + member(b"after", b"x") + END
    assert [r["name"] for r in imgfs_view(data)] == [b"link", b"after"]


def test_ustar_prefix_field_agrees_with_tarfile() -> None:
    path = "/".join([f"directory-{n:02d}" for n in range(10)]) + "/leaf.txt"  # 128 chars: needs the prefix field
    data = tar_of([F(path, b"x")], tarfile.USTAR_FORMAT)
    assert data[345:500].rstrip(b"\0"), "tarfile did not use the prefix field"
    assert one(data)["name"] == path.encode()
    assert imgfs_view(data) == tarfile_view(data)


def test_prefix_field_hand_made_and_ignored_without_ustar_magic() -> None:
    assert one(member(b"file", b"x", prefix=b"some/dir") + END)["name"] == b"some/dir/file"
    # Old GNU headers ('ustar  \0') use those bytes for other things: they are not a prefix.
    assert one(member(b"file", b"x", prefix=b"junk", magic=b"ustar  \0") + END)["name"] == b"file"


def test_gnu_long_names_and_long_links() -> None:
    long_dir = "d" * 120
    long_target = "/".join(["t" * 60] * 4)
    members = [F(f"{long_dir}/{'n' * 150}", b"data")]
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        ti = tarfile.TarInfo(f"{long_dir}/{'l' * 140}{kind.decode()}")
        ti.type, ti.linkname = kind, long_target
        members.append((ti, None))
    data = tar_of(members, tarfile.GNU_FORMAT)
    assert b"././@LongLink" in data
    view = imgfs_view(data)
    assert view == tarfile_view(data)
    assert view[0]["name"] == f"{long_dir}/{'n' * 150}".encode()
    assert view[1]["link"] == view[2]["link"] == long_target.encode()


def test_gnu_long_name_applies_to_the_next_member_only() -> None:
    data = member(b"././@LongLink", b"x" * 200 + b"\0", typeflag=b"L") + member(b"short", b"1") + member(b"b", b"2")
    assert [r["name"] for r in imgfs_view(data + END)] == [b"x" * 200, b"b"]


def test_pax_path_linkpath_uid_gid_agree_with_tarfile() -> None:
    file = F("p" * 200, b"content", uid=5_000_000, gid=3_000_000)  # above 7 octal digits: PAX records
    link = tarfile.TarInfo("l" * 150)
    link.type, link.linkname = tarfile.SYMTYPE, "caf\u00e9/" + "x" * 120
    data = tar_of([file, (link, None)], tarfile.PAX_FORMAT)
    view = imgfs_view(data)
    assert view == tarfile_view(data)
    assert (view[0]["uid"], view[0]["gid"]) == (5_000_000, 3_000_000)
    assert view[1]["link"] == ("caf\u00e9/" + "x" * 120).encode()


def test_pax_size_overrides_the_header() -> None:
    # The header says 0 bytes, the PAX record 5: the data and the next header follow the PAX size.
    data = pax({b"size": b"5"}) + header(b"f", size=0) + pad(b"12345") + member(b"g", b"z") + END
    view = imgfs_view(data)
    assert [(r["name"], r["size"], r["data"]) for r in view] == [(b"f", 5, b"12345"), (b"g", 1, b"z")]
    assert view == tarfile_view(data)


@pytest.mark.parametrize("text,want", [
    (b"1700000000.25", 1_700_000_000.25), (b"1700000000", 1_700_000_000.0), (b"-1.5", -1.5), (b"0.000001", 0.000001),
    (b"-0.5", -0.5),
])
def test_pax_mtime_keeps_its_fraction(text: bytes, want: float) -> None:
    data = pax({b"mtime": text}) + member(b"f", b"") + END
    assert one(data)["mtime"] == pytest.approx(want, abs=1e-9)
    assert tarfile_view(data)[0]["mtime"] == pytest.approx(want, abs=1e-9)


def test_pax_xattrs_schily_raw_and_libarchive_base64() -> None:
    cap = bytes.fromhex("0100000200200000000000000000000000")  # a security.capability value, not UTF-8
    recs = [(b"SCHILY.xattr.security.capability", cap), (b"SCHILY.xattr.user.note", b"caf\xc3\xa9"),
            (b"LIBARCHIVE.xattr.user.sp%20ace", base64.b64encode(b"\xff\x00v")),
            (b"LIBARCHIVE.xattr.trusted.x", base64.b64encode(b"plain"))]
    data = member(b"PaxHeader", pax_records(recs), typeflag=b"x") + member(b"f", b"") + END
    assert one(data)["xattrs"] == {"security.capability": cap, "user.note": b"caf\xc3\xa9",
                                   "user.sp ace": b"\xff\x00v", "trusted.x": b"plain"}


def test_tarfile_written_xattrs_agree() -> None:
    ti, body = F("f", b"1")
    ti.pax_headers = {"SCHILY.xattr.user.a": "one", "SCHILY.xattr.user.b": "two"}
    data = tar_of([(ti, body)], tarfile.PAX_FORMAT)
    assert imgfs_view(data) == tarfile_view(data)
    assert one(data)["xattrs"] == {"user.a": b"one", "user.b": b"two"}


@pytest.mark.parametrize("flag", [b"x", b"X"], ids=["posix", "solaris"])
def test_pax_extended_header_type_flags(flag: bytes) -> None:
    data = pax({b"path": b"from-pax", b"uid": b"42"}, typeflag=flag) + member(b"hdr", b"d") + END
    assert (one(data)["name"], one(data)["uid"], one(data)["data"]) == (b"from-pax", 42, b"d")


def test_pax_header_applies_to_one_member_only() -> None:
    data = pax({b"path": b"renamed", b"uid": b"7"}) + member(b"a", b"1") + member(b"b", b"2") + END
    view = imgfs_view(data)
    assert [(r["name"], r["uid"]) for r in view] == [(b"renamed", 7), (b"b", 0)]


def test_pax_global_header_is_ignored() -> None:
    # Rule 19: 'g' records do not rename or re-own anything, not even the member right after.
    g = pax({b"path": b"evil", b"uid": b"4242", b"mtime": b"99"}, typeflag=b"g")
    data = g + member(b"a", b"1", uid=5, mtime=10) + pax({b"uid": b"6"}) + member(b"b", b"2", mtime=11) + END
    view = imgfs_view(data)
    assert [(r["name"], r["uid"], r["mtime"]) for r in view] == [(b"a", 5, 10), (b"b", 6, 11)]


def test_pax_path_and_gnu_long_name_together_pax_wins() -> None:
    data = (member(b"././@LongLink", b"from-gnu\0", typeflag=b"L") + pax({b"path": b"from-pax"})
            + member(b"hdr", b"") + END)
    assert one(data)["name"] == b"from-pax"


# -- numbers ----------------------------------------------------------------------------------------
def test_base256_uid_gid_as_tarfile_writes_them() -> None:
    data = tar_of([F("big", b"", uid=2**40, gid=2**33 + 1)], tarfile.GNU_FORMAT)
    assert data[108] & 0x80 and data[116] & 0x80, "tarfile did not write base-256"
    assert (one(data)["uid"], one(data)["gid"]) == (2**40, 2**33 + 1)
    assert imgfs_view(data) == tarfile_view(data)


def test_owner_ids_past_32_bits_after_small_ones_keep_every_id() -> None:
    # The id arrays start 32 bits wide and widen when the first larger id comes, keeping those before it.
    data = tar_of([F("small", b"", uid=1000, gid=0xFFFFFFFF), F("big", b"", uid=2**40, gid=7), F("after", b"", uid=5)],
                  tarfile.GNU_FORMAT)
    idx = index_of(data)
    want = [(1000, 0xFFFFFFFF), (2**40, 7), (5, 0)]
    assert list(zip(idx.uids, idx.gids, strict=True)) == want
    back, _ = load_index(dump_index(idx, len(data)))
    assert list(zip(back.uids, back.gids, strict=True)) == want and back.uids.typecode == "q"


def test_base256_size_and_negative_mtime() -> None:
    data = header(b"f", size=base256(5, 12), mtime=base256(-1, 12)) + pad(b"abcde") + member(b"g", b"") + END
    view = imgfs_view(data)
    assert [(r["name"], r["size"], r["data"], r["mtime"]) for r in view] == [(b"f", 5, b"abcde", -1), (b"g", 0, b"", 0)]
    assert [r["mtime"] for r in tarfile_view(data)] == [-1, 0]


def test_octal_fields_with_spaces_and_no_nul() -> None:
    # Old writers pad with spaces or fill the whole field with digits.
    data = header(b"f", mode=b"  644 \0", uid=b"0001750 ", gid=b"00017500", size=b"00000000003 ",
                  mtime=b"14000000000 ") + pad(b"xyz") + END
    r = one(data)
    assert (r["mode"], r["uid"], r["gid"], r["size"], r["data"], r["mtime"]) == (
        0o644, 0o1750, 0o17500, 3, b"xyz", 0o14000000000)


def test_header_claiming_an_exabyte_is_cut_off_not_read() -> None:
    data = member(b"ok", b"fine") + header(b"huge", size=base256(1 << 60, 12)) + b"tail" * 200
    idx = index_of(data)  # must neither allocate nor read an exabyte
    assert idx.names == [b"ok", b"huge"]
    assert idx.error
    assert 1 in idx.broken and 0 not in idx.broken
    with pytest.raises(FormatError):
        b"".join(merge(data).read_all(merge(data).lookup("huge")))


@pytest.mark.parametrize("size", [base256(1 << 86, 12), base256(-5, 12)], ids=["2**86", "negative"])
def test_impossible_sizes_are_format_errors(size: bytes) -> None:
    data = member(b"ok", b"1") + header(b"bad", size=size) + END
    idx = index_of(data)
    assert idx.names == [b"ok"] and idx.error
    with pytest.raises(FormatError):
        index_of(header(b"bad", size=size) + END)


def test_pax_record_claiming_a_gigabyte_is_refused() -> None:
    # A PAX header member whose size says 1 GiB: refused before it is buffered.
    data = member(b"ok", b"1") + header(b"PaxHeader", typeflag=b"x", size=1 << 30) + b"12 path=abc\n"
    idx = index_of(data)
    assert idx.names == [b"ok"] and idx.error
    # A record inside a small PAX header whose length field claims a gigabyte.
    data = member(b"ok", b"1") + member(b"PaxHeader", b"1073741824 path=abc\n", typeflag=b"x") + member(b"f") + END
    idx = index_of(data)
    assert idx.names[:1] == [b"ok"] and idx.error and b"abc" not in idx.names


@pytest.mark.parametrize("record", [b"mtime=nan", b"mtime=inf", b"mtime=1e400", b"size=-1", b"uid=x", b"size=0x10",
                                    b"mtime=", b"size=1" + b"0" * 5000])
def test_bad_pax_numbers_are_format_errors(record: bytes) -> None:
    k, _, v = record.partition(b"=")
    data = member(b"ok", b"1") + pax({k: v}) + member(b"f", b"") + member(b"g", b"") + END
    idx = index_of(data)
    assert idx.names[:1] == [b"ok"]
    # Either refused (error set) or a finite, usable value: never NaN or infinity in the index.
    if not idx.error:
        assert all(abs(idx.mtime(i)) < 2**62 for i in range(len(idx)))


# -- names ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,want", [
    (b"./a/b", b"a/b"), (b"/a/b", b"a/b"), (b"a//b", b"a/b"), (b".//a/./b/", b"a/b"), (b"///x", b"x"),
    (b"a/../b", b"b"), (b"a/b/..", b"a"), (b"./", b""), (b".", b""), (b"/", b""), (b"a/./././b", b"a/b"),
    (b"..a/b..", b"..a/b.."), (b".hidden", b".hidden"), (b"./.wh..wh..opq", b".wh..wh..opq"),
])
def test_names_are_normalised(raw: bytes, want: bytes) -> None:
    assert one(member(raw, b"") + END)["name"] == want


@pytest.mark.parametrize("raw", [b"..", b"../x", b"a/../../x", b"/../etc/passwd", b"./../x", b"a/b/../../../c"])
def test_names_climbing_out_are_skipped(raw: bytes) -> None:
    data = member(b"before", b"1") + member(raw, b"2") + member(b"after", b"3") + END
    idx = index_of(data)
    assert idx.names == [b"before", b"after"]
    assert len(idx.skipped) == 1
    assert imgfs_view(data)[1]["data"] == b"3"  # offsets stay right after a skipped member


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_non_utf8_names_kept_as_bytes(fmt: int) -> None:
    name = b"caf\xe9/\xff\xfe-" + "\u00e9".encode()
    ti, body = F(name.decode("utf-8", "surrogateescape"), b"x")
    link = tarfile.TarInfo("l")
    link.type, link.linkname = tarfile.SYMTYPE, b"\x80target".decode("utf-8", "surrogateescape")
    data = tar_of([(ti, body), (link, None)], fmt)
    view = imgfs_view(data)
    assert view[0]["name"] == name
    assert view[1]["link"] == b"\x80target"
    assert view == tarfile_view(data)


# -- broken input -----------------------------------------------------------------------------------
def test_sparse_gnu_member_with_a_bad_map_is_marked_broken() -> None:
    hdr = bytearray(header(b"holes", typeflag=b"S", size=512))
    hdr[386:410] = b"00000001000\0" + b"00000002000\0"  # a segment past the real size (0)
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    data = member(b"before", b"1") + bytes(hdr) + bytes(512) + member(b"after", b"2") + END
    idx = index_of(data)
    assert list(idx.names) == [b"before", b"holes", b"after"]
    assert "outside the file" in idx.broken[1]
    tree = merge(data)
    with pytest.raises(FormatError):
        list(tree.read_all(tree.lookup("holes")))
    assert b"".join(tree.read_all(tree.lookup("after"))) == b"2"


def test_sparse_pax_member_without_its_map_is_marked_broken() -> None:
    recs = {b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0", b"GNU.sparse.name": b"real",
            b"GNU.sparse.realsize": b"4096"}
    data = pax(recs) + member(b"GNUSparseFile.0/real", b"\0" * 512) + END
    idx = index_of(data)
    assert list(idx.names) == [b"real"] and idx.sizes[0] == 4096 and "runs past" in idx.broken[0]


@pytest.mark.parametrize("data", [
    pytest.param(b"x" * 1024, id="text"),
    pytest.param(b'{"schemaVersion": 2}'.ljust(1024, b"\n"), id="json"),
    pytest.param(bytes(range(256)) * 8, id="binary"),
    pytest.param(header(b"f", checksum=1) + END, id="bad-checksum"),
])
def test_not_a_tar_at_offset_zero(data: bytes) -> None:
    with pytest.raises(FormatError, match="not a tar"):
        index_of(data)


def test_bad_checksum_later_keeps_the_members_before() -> None:
    data = member(b"a", b"1") + member(b"b", b"2") + header(b"c", checksum=7) + END
    idx = index_of(data)
    assert idx.names == [b"a", b"b"]
    assert "checksum" in (idx.error or "")


@pytest.mark.parametrize("fill", [0x7F, 0xFF])
def test_checksum_is_exact_for_headers_full_of_bytes(fill: int) -> None:
    # A header with more than 256 non-zero bytes (long name, prefix and link target) takes the exact sum,
    # the others a shortcut through Adler-32; either way a checksum off by one, or by 65521, is refused.
    name, prefix, link = bytes([fill]) * 99, bytes([fill]) * 154, bytes([fill]) * 99
    for kw in ({"prefix": prefix, "linkname": link, "typeflag": b"2"}, {}):
        good = header(name, **kw)  # type: ignore[arg-type]
        assert (good.count(0) >= 256) == (not kw)
        assert one(good + END)["name"].endswith(name)
        right = int(good[148:154], 8)
        for wrong in (right + 1, right - 65521, right + 65521):
            if 0 <= wrong < 8 ** 6:
                with pytest.raises(FormatError, match="checksum"):
                    index_of(header(name, checksum=wrong, **kw) + END)  # type: ignore[arg-type]


def test_signed_checksum_of_old_tars_is_accepted() -> None:
    block = header(b"caf\xe9\xff")
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + b" " * 8 + block[156:])
    assert one(header(b"caf\xe9\xff", checksum=signed) + END)["name"] == b"caf\xe9\xff"


def test_truncated_data_marks_the_cut_member() -> None:
    full = tar_of([F("a", b"A" * 100), F("b", b"B" * 3000), F("c", b"C")])
    cut = full[:512 + 512 + 512 + 1000]  # inside b's data
    idx = index_of(cut)
    assert idx.names == [b"a", b"b"]
    assert idx.error and 1 in idx.broken and 0 not in idx.broken
    tree = merge(cut)
    assert b"".join(tree.read_all(tree.lookup("a"))) == b"A" * 100
    with pytest.raises(FormatError):
        list(tree.read_all(tree.lookup("b")))


def test_truncated_inside_a_header() -> None:
    full = tar_of([F("a", b"A"), F("b", b"B")])
    idx = index_of(full[:512 + 512 + 100])
    assert idx.names == [b"a"] and idx.error and not idx.broken


@pytest.mark.parametrize("cut", [0, 1, 511, 512, 1023])
def test_truncated_first_member_raises_or_reports(cut: int) -> None:
    full = tar_of([F("a", b"A" * 600)])
    try:
        idx = index_of(full[:cut])
    except ImgfsError:
        return
    # Nothing indexed must be readable as if complete.
    assert not idx.names or idx.error


def test_no_end_of_archive_blocks_is_tolerated() -> None:
    data = member(b"a", b"1") + member(b"b", b"22")
    idx = index_of(data)
    assert idx.names == [b"a", b"b"] and idx.error is None
    assert index_of(data + bytes(512)).error is None  # a single zero block too


def test_members_after_end_marker_are_ignored() -> None:
    data = member(b"a", b"1") + END + member(b"hidden", b"2") + END
    assert index_of(data).names == [b"a"]


def test_scan_through_a_file_source(tmp_path: os.PathLike[str]) -> None:
    data = tar_of(_every_kind(), tarfile.PAX_FORMAT)
    path = os.path.join(tmp_path, "t.tar")
    with open(path, "wb") as fh:
        fh.write(data)
    src = FileSource(path)
    try:
        idx = scan(src)
        assert imgfs_view(data, idx) == tarfile_view(data)
        assert idx.end <= len(data)
    finally:
        src.close()


# -- bounded memory on hostile PAX headers --------------------------------------------------------
_PAX_FLOOD = """
import resource, sys
sys.path.insert(0, sys.argv[1])
from imgfs.tarindex import FileSource, scan
resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))
idx = scan(FileSource(sys.argv[2]))
print(len(idx), idx.error)
"""


def test_a_flood_of_pax_xattr_records_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    # 16 members of 500k tiny xattrs each cost 1.35 GB and 32 s: now the first header is refused (more
    # records than any member needs), in a child limited to 400 MiB of address space.
    record = b"".join(b"%d SCHILY.xattr.user.%07d=\n" % (len(b" SCHILY.xattr.user.0000000=\n") + 2, k)
                      for k in range(500_000))
    flood = tmp_path / "flood.tar"
    flood.write_bytes(member(b"first", b"1") + (member(b"PaxHeader", record, typeflag=b"x") + member(b"f")) * 16
                      + END)
    proc = subprocess.run([sys.executable, "-c", _PAX_FLOOD, str(Path(__file__).parent.parent), str(flood)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-400:]
    assert proc.stdout.startswith(f"1 PAX header with more than {MAX_PAX_RECORDS} records"), proc.stdout


def test_the_xattrs_of_a_layer_are_bounded_in_all() -> None:
    n = 100_000  # under the records a header may hold; ~14 MiB counted each, so the 5th member passes 64 MiB
    recs = pax_records((b"SCHILY.xattr.user.%06d" % k, b"v") for k in range(n))
    one = member(b"PaxHeader", recs, typeflag=b"x")
    idx = index_of(b"".join(one + member(b"f%d" % k) for k in range(8)) + END)
    assert f"more than {MAX_XATTR_BYTES >> 20} MiB" in (idx.error or "")
    assert 3 <= len(idx) < 8 and all(len(idx.xattrs[i]) == n for i in range(len(idx)))
