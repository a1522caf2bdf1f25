"""The low-level bridge: directory listings on the wire, big directories, and what the kernel keeps."""

from __future__ import annotations

import ctypes
import os
import re
import stat
import time
from pathlib import Path

import pytest

import fuse
from conftest import IMAGES
from imgfs.fuse import bridge
from tarmaker import END, ArchiveBuilder, config_for, member


def test_dirents_are_packed_as_libfuse_packs_them() -> None:
    lib = ctypes.CDLL(fuse._libfuse._name)
    lib.fuse_add_direntry.restype = ctypes.c_size_t
    lib.fuse_add_direntry.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                      ctypes.POINTER(fuse.c_stat), ctypes.c_int64]
    entries = [(b".", stat.S_IFDIR, 7), (b"..", stat.S_IFDIR, 7), (b"a", stat.S_IFREG, 1 << 48 | 9),
               (b"x" * 255, stat.S_IFLNK, 3), (b"caf\xe9", stat.S_IFCHR, 4), (b"1234567", stat.S_IFIFO, 5)]
    expected = b""
    for n, (name, mode, ino) in enumerate(entries):
        st = fuse.c_stat(st_mode=mode, st_ino=ino)
        size = lib.fuse_add_direntry(None, None, 0, name, None, 0)
        buf = ctypes.create_string_buffer(size)
        assert lib.fuse_add_direntry(None, buf, size, name, ctypes.byref(st), n + 1) == size
        expected += buf.raw
    data, ends = bridge.pack_dir(entries)
    assert data == expected
    assert ends[-1] == len(data) and ends == sorted(ends) and all(e % 8 == 0 for e in ends)


def test_readdirplus_entries_are_packed_as_libfuse_3_packs_them() -> None:
    lib = ctypes.CDLL("libfuse3.so.3")
    lib.fuse_add_direntry_plus.restype = ctypes.c_size_t
    lib.fuse_add_direntry_plus.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                           ctypes.POINTER(bridge.EntryParam), ctypes.c_int64]
    stats = [(1 << 40 | 9, stat.S_IFREG | 0o644, 2, 1000, 1001, 0, 123456789, 1700000000.25),
             (3, stat.S_IFLNK | 0o777, 1, 0, 0, 0, 7, -1.5),
             (4, stat.S_IFCHR | 0o600, 1, 0, 5, os.makedev(1, 5), 0, 0.0)]
    entries = [(b"a", stats[0][1], stats[0][0], stats[0]), (b"x" * 255, stats[1][1], stats[1][0], stats[1]),
               (b"caf\xe9", stats[2][1], stats[2][0], stats[2])]
    expected = b""
    for n, (name, _mode, _ino, st) in enumerate(entries):
        e = bridge.EntryParam(ino=st[0], attr_timeout=bridge.TIMEOUT, entry_timeout=bridge.TIMEOUT)
        bridge.fill(e.attr, st, 1 << 20)
        size = lib.fuse_add_direntry_plus(None, None, 0, name, None, 0)
        buf = ctypes.create_string_buffer(size)
        assert lib.fuse_add_direntry_plus(None, buf, size, name, ctypes.byref(e), n + 1) == size
        expected += buf.raw
    data, ends = bridge.pack_dirplus(entries, 1 << 20)
    assert data == expected
    assert ends[-1] == len(data) and all(e % 8 == 0 for e in ends)
    # An entry without attributes: node id 0 (the kernel looks it up if it needs to), its dirent as readdir's
    data, _ = bridge.pack_dirplus([(b".", stat.S_IFDIR, 7, None)])
    assert data == bytes(bridge._ENTRY_OUT.size) + bridge.pack_dir([(b".", stat.S_IFDIR, 7)])[0]


@pytest.fixture
def big_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    """An image with one directory far bigger than a READDIR request (4 KiB): 3000 names of 6-95 bytes."""
    names = [f"{n:05d}-" + "n" * (n % 90) for n in range(3000)]
    layer = member(b"big/", typeflag=b"5") + b"".join(member(b"big/" + n.encode(), b"x") for n in names) + END
    b = ArchiveBuilder()
    b.add("manifest.json", [b.docker_image([layer], ["big:1"], config_for([layer]))])
    return Path(b.save(tmp_path / "bigdir.tar")), names


def test_a_directory_listed_over_many_requests_is_whole_every_time(mounter, big_dir) -> None:
    archive, names = big_dir
    mp = mounter(archive)
    for top in (mp / "merged" / "big", next((mp / "layers").iterdir()) / "big"):
        for _ in range(2):  # the second listing comes from the kernel's cache
            assert sorted(os.listdir(top)) == names
            with os.scandir(top) as it:
                seen = {e.name: (e.inode(), e.is_file()) for e in it}
            assert len({ino for ino, _ in seen.values()}) == len(names)
            assert all(is_file for _, is_file in seen.values())
            assert os.lstat(top / names[-1]).st_ino == seen[names[-1]][0]


def _requests(log: Path) -> list[str]:
    """The opcodes logged so far, once libfuse's lines (passed on by a thread under --debug) stop coming."""
    size = -1
    while size != log.stat().st_size:
        size = log.stat().st_size
        time.sleep(0.3)
    return re.findall(r"opcode: ([A-Z_]+)", log.read_text())


def _walk(top: Path) -> int:
    count = 0
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.lstat(os.path.join(root, name))
            count += 1
    return count


def test_a_second_walk_is_answered_by_the_kernel(mounter, tmp_path: Path) -> None:
    log = tmp_path / "debug.log"
    mp = mounter(IMAGES / "multi.docker-oci.tar", debug=True, log_file=str(log))
    first = _walk(mp)
    before = _requests(log)
    assert _walk(mp) == first > 1000
    after = _requests(log)[len(before):]
    minor = int(re.search(r"INIT: 7\.(\d+)", log.read_text()).group(1))  # what the kernel speaks
    # Symlinks that os.walk follows to learn whether they lead to a directory are read each time:
    # libfuse 2 cannot tell the kernel to keep their targets (FUSE_CACHE_SYMLINKS). FORGETs are the
    # kernel trimming its inode cache (other tests churn memory), not questions.
    after = [op for op in after if op not in ("READLINK", "FORGET", "BATCH_FORGET")]
    if minor >= 29:  # Linux >= 5.1: files and directories open without asking, listings are cached
        assert after == [], after
        assert "OPENDIR" in before and "RELEASEDIR" not in before and "RELEASE" not in before
    else:  # older kernels still open and list, but never look a name up again
        assert set(after) <= {"OPENDIR", "READDIR", "RELEASEDIR"}, after


def test_listing_slices_hold_whole_entries_and_resume_at_the_next() -> None:
    entries = [(f"name-{n}".encode() * (n % 7 + 1), stat.S_IFREG, n + 2) for n in range(500)]
    listing = bridge.pack_dir(entries)
    for size in (300, 1000, 4096):  # the kernel asks for a page; one entry takes at most 24 + 255 + 7 bytes
        got, offset = b"", 0
        while True:
            chunk = bridge.dir_slice(listing, offset, size)
            if not chunk:
                break
            assert len(chunk) <= size
            got += chunk
            pos = 0
            while pos < len(chunk):  # walk the chunk's entries: each names the offset of the next
                _, nxt, namelen, _ = bridge._DIRENT.unpack_from(chunk, pos)
                pos += (bridge._DIRENT.size + namelen + 7) & ~7
            assert pos == len(chunk)
            offset = nxt
        assert got == listing[0]
    for nonsense in (-1, 501, 10**12):
        assert bridge.dir_slice(listing, nonsense, 4096) == b""
