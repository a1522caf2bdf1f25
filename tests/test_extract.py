"""Safe extraction against hostile trees and hostile destinations: nothing outside DIR may change."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

import tarmaker
from clihelp import docker_archive, run
from imgfs import open_archive
from imgfs.extract import extract, safe_parts
from imgfs.tree import Tree
from tarmaker import END, BytesSource, D, F, H, S, base256, header, index_of, pax, tar_of


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Everything under `root` except `skip`: type, mode, size, mtime, inode, link target, content hash."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            if p == skip:
                continue
            st = os.lstat(p)
            extra = os.readlink(p) if stat.S_ISLNK(st.st_mode) else (
                hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None)
            out[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_nlink, extra)
    return out


@pytest.fixture
def place(tmp_path: Path) -> tuple[Path, Path]:
    """(dest, outside): an empty destination, and a directory beside it holding a victim file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    return tmp_path / "dest", outside


def crafted(members: list, layout: dict[bytes, str | None]) -> Tree:
    """A Tree whose paths are set by hand (`layout`: key -> member name, None for an implied dir)."""
    data = tar_of(members)
    idx = index_of(data)
    refs = {name.decode(): i for i, name in enumerate(idx.names)}
    tree = Tree([idx], [BytesSource(data)])
    nodes = {b"": 0}
    implied = -2
    for key, member in layout.items():
        parent = key.rpartition(b"/")[0]
        if parent not in layout:
            parent = b""  # hostile keys hang off the root
        name = key[len(parent) + 1:] if parent else key
        if member is None:
            ref, implied = implied, implied - 1
        else:
            ref = refs[member]
        tree.extra.append(name)  # names set by hand, whatever the member is called
        nodes[key] = tree.add(nodes[parent], name, -1 - len(tree.extra), ref)
    tree.finish()
    counts: dict[int, int] = {}
    for ref in tree.refs:
        counts[ref] = counts.get(ref, 0) + 1
    tree.nlinks = {r: c for r, c in counts.items() if c > 1 and r >= 0}
    return tree


def walk_keys(tree: Tree) -> list[bytes]:
    return [k for k, _ in tree.walk() if k]


def test_unsafe_top_keys_are_refused_before_walking(tmp_path, place):
    dest, _ = place
    tree = crafted([F("f", b"x")], {b"f": "f"})
    stats = extract(tree, [b"..", b"a/../f", b"/f"], dest, preserve_owner=False)
    assert len(stats.errors) == 3 and os.listdir(dest) == []


@pytest.mark.parametrize("key", [b"..", b"a/../../b", b"a//b", b"nul\0x", b"/abs", b".", b"a/./b"])
def test_safe_parts_refuses(key):
    with pytest.raises(Exception, match="unsafe"):
        safe_parts(key)


def test_hostile_names_are_refused_and_nothing_escapes(tmp_path, place):
    dest, outside = place
    tree = crafted([F("f", b"evil"), D("d")], {b"..": "f", b"../outside/victim": "f", b"a": None,
                                                 b"a/../../escaped": "f", b"nul\0x": "f", b"ok": "f"})
    before = snapshot(tmp_path, dest)
    stats = extract(tree, [b""], dest, preserve_owner=False)
    assert snapshot(tmp_path, dest) == before
    assert len(stats.errors) == 4 and all("unsafe" in e for e in stats.errors), stats.errors
    assert (dest / "ok").read_bytes() == b"evil" and stats.files == 1
    assert sorted(os.listdir(dest)) == ["a", "ok"]


@pytest.mark.parametrize("target", ["/etc", "../outside", "../../outside", "/"])
def test_symlink_then_file_below_it_is_not_written_through(tmp_path, place, target):
    dest, outside = place
    tree = crafted([S("lib", target), F("lib/victim", b"pwned")], {b"lib": "lib", b"lib/victim": "lib/victim"})
    before = snapshot(tmp_path, dest)
    etc_before = snapshot(Path("/etc"), Path("/nonexistent")) if target.startswith("/") else None
    stats = extract(tree, [b""], dest, preserve_owner=False)
    assert snapshot(tmp_path, dest) == before
    assert (outside / "victim").read_text() == "precious\n"
    if etc_before is not None:
        assert not Path("/etc/victim").exists() and not Path("/victim").exists()
    # the later entry wins inside DEST: lib became a real directory
    assert (dest / "lib").is_dir() and not (dest / "lib").is_symlink()
    assert (dest / "lib/victim").read_bytes() == b"pwned" and stats.errors == []


def test_preexisting_symlinks_in_dest_are_replaced_not_followed(tmp_path, place):
    dest, outside = place
    dest.mkdir()
    os.symlink(outside, dest / "app")  # a directory position
    os.symlink(outside / "victim", dest / "top.txt")  # a file position, to an existing file
    os.symlink(outside / "created-by-mistake", dest / "new.txt")  # a dangling link
    tree = crafted([D("app"), F("app/victim", b"pwned"), F("top.txt", b"x"), F("new.txt", b"y")],
                   {b"app": "app", b"app/victim": "app/victim", b"top.txt": "top.txt", b"new.txt": "new.txt"})
    before = snapshot(tmp_path, dest)
    stats = extract(tree, [b""], dest, preserve_owner=False)
    assert stats.errors == []
    assert snapshot(tmp_path, dest) == before
    assert not (outside / "created-by-mistake").exists()
    assert (dest / "app").is_dir() and not (dest / "app").is_symlink()
    assert (dest / "app/victim").read_bytes() == b"pwned"
    assert not (dest / "top.txt").is_symlink() and (dest / "top.txt").read_bytes() == b"x"


def test_preexisting_symlink_as_intermediate_directory(tmp_path, place):
    dest, outside = place
    (dest / "a").mkdir(parents=True)
    os.symlink(outside, dest / "a/b")
    tree = crafted([F("f", b"pwned")], {b"a": None, b"a/b": None, b"a/b/victim": "f"})
    before = snapshot(tmp_path, dest)
    extract(tree, [b"a/b/victim"], dest, preserve_owner=False)
    assert snapshot(tmp_path, dest) == before
    assert (dest / "a/b/victim").read_bytes() == b"pwned"


def test_preexisting_hardlink_to_outside_file_is_not_written_into(tmp_path, place):
    dest, outside = place
    dest.mkdir()
    os.link(outside / "victim", dest / "f")
    tree = crafted([F("f", b"pwned")], {b"f": "f"})
    before = snapshot(tmp_path, dest)
    extract(tree, [b"f"], dest, preserve_owner=False)
    assert (outside / "victim").read_text() == "precious\n"
    after = snapshot(tmp_path, dest)
    victim = str(outside / "victim")
    assert after[victim][4] == 1 and {k: v for k, v in after.items() if k != victim} == {
        k: v for k, v in before.items() if k != victim}


def test_hard_link_groups_become_hard_links_inside_dest(tmp_path, place):
    dest, _ = place
    tree = crafted([F("x", b"shared", mode=0o640, mtime=1_700_000_000)], {b"d": None, b"d/one": "x", b"two": "x"})
    stats = extract(tree, [b""], dest, preserve_owner=False)
    a, b = os.stat(dest / "d/one"), os.stat(dest / "two")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert stat.S_IMODE(a.st_mode) == 0o640 and int(a.st_mtime) == 1_700_000_000
    assert (stats.files, stats.hardlinks) == (1, 1)


def test_directory_in_the_way_of_a_file_is_an_error_for_that_entry_only(tmp_path, place):
    dest, _ = place
    (dest / "f").mkdir(parents=True)
    tree = crafted([F("f", b"1"), F("g", b"2")], {b"f": "f", b"g": "g"})
    stats = extract(tree, [b""], dest, preserve_owner=False)
    assert len(stats.errors) == 1 and stats.errors[0].startswith("/f:")
    assert (dest / "g").read_bytes() == b"2" and (dest / "f").is_dir()


def test_read_only_directories_and_metadata(tmp_path, place):
    dest, _ = place
    tree = crafted([D("ro", mode=0o555, mtime=1_600_000_000), F("ro/f", b"data", mode=0o4755, mtime=1_500_000_000),
                    S("ro/l", "f", mtime=1_400_000_000)], {b"ro": "ro", b"ro/f": "ro/f", b"ro/l": "ro/l"})
    stats = extract(tree, [b"ro"], dest, preserve_owner=False)
    assert stats.errors == []
    st = os.stat(dest / "ro")
    assert stat.S_IMODE(st.st_mode) == 0o555 and int(st.st_mtime) == 1_600_000_000
    st = os.stat(dest / "ro/f")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and int(st.st_mtime) == 1_500_000_000
    assert int(os.lstat(dest / "ro/l").st_mtime) == 1_400_000_000 and os.readlink(dest / "ro/l") == "f"
    os.chmod(dest / "ro", 0o755)  # let tmp_path cleanup work when not root


def test_broken_member_leaves_no_partial_file(tmp_path, place):
    dest, _ = place
    data = tar_of([F("big", b"z" * 5000), F("ok", b"fine")])
    idx = index_of(data)
    cut = data[:idx.offsets[0] + 100]  # the source ends inside 'big'
    tree = Tree([idx], [BytesSource(cut)])
    tree.add(0, b"big", 0, 0)
    tree.add(0, b"ok", 1, 1)
    tree.finish()
    # 'ok' lies past the cut as well: both fail, neither leaves a file behind
    stats = extract(tree, [b""], dest, preserve_owner=False)
    assert len(stats.errors) == 2 and os.listdir(dest) == []


# -- whole hostile archives through the command line ---------------------------------------------
def hostile_layers(outside: Path) -> list[bytes]:
    return [
        tar_of([D("etc"), F("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"), S("lib", "/etc"),
                S("up", "../../" + outside.name), S("abs", str(outside))]),
        tar_of([F("lib/evil", b"pwned"), F("up/victim", b"pwned"), F("abs/victim", b"pwned"),
                H("hl-out", "../../" + outside.name + "/victim"), H("hl-abs", str(outside / "victim")),
                H("hl-etc", "/etc/passwd")]),
    ]


@pytest.mark.parametrize("args", [["/"], ["/", "--layer", "2"], ["/lib/", "/up", "/abs", "/hl-etc"]])
def test_hostile_archive_extracts_inside_dest_only(capsysbinary, tmp_path, place, args):
    dest, outside = place
    archive = docker_archive(tmp_path / "hostile.tar", hostile_layers(outside))
    before = snapshot(tmp_path, dest)
    res = run(capsysbinary, "extract", archive, *args, "-o", dest)
    assert "Traceback" not in res.err
    assert snapshot(tmp_path, dest) == before
    assert (outside / "victim").read_text() == "precious\n"
    assert not Path("/etc/evil").exists()
    for dirpath, _, files in os.walk(dest):
        for n in files:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISREG(st.st_mode):
                assert st.st_ino != os.stat(outside / "victim").st_ino


def test_hostile_archive_merged_view_keeps_links_inside_root(capsysbinary, tmp_path, place):
    dest, outside = place
    archive = docker_archive(tmp_path / "hostile.tar", hostile_layers(outside))
    with open_archive(archive, use_cache=False) as a:
        tree = a.image().merged()
        keys = walk_keys(tree)
    assert b"etc/evil" in keys  # lib -> /etc was followed inside the image root
    res = run(capsysbinary, "extract", archive, "/", "-o", dest)
    assert res.rc == 0, res.err
    assert (dest / "etc/evil").read_bytes() == b"pwned"
    assert os.readlink(dest / "lib") == "/etc"  # stored as written, never followed by extraction
    assert os.stat(dest / "hl-etc").st_ino == os.stat(dest / "etc/passwd").st_ino


# -- numbers and names no system call takes --------------------------------------------------------
def _unrepresentable_layer() -> bytes:
    """Entries whose owner, link target or device number cannot be given to the kernel, between good ones."""
    member = tarmaker.member
    return (member(b"ok", b"fine\n")
            + pax({b"uid": b"%d" % (1 << 40)}) + member(b"pax-uid", b"a")
            + member(b"b256-gid", b"b", gid=base256(1 << 40, 8))
            + pax({b"linkpath": b"a\0b"}) + header(b"nul-link", typeflag=b"2", linkname=b"a")
            + header(b"dev-huge", typeflag=b"3", devmajor=base256(1 << 50, 8))
            + header(b"dev-negative", typeflag=b"4", devmajor=base256(-1, 8))
            + member(b"last", b"end\n") + END)


def test_unrepresentable_entries_are_skipped_with_a_message_and_the_rest_extracted(capsysbinary, tmp_path):
    archive = docker_archive(tmp_path / "odd.tar", [_unrepresentable_layer()])
    dest = tmp_path / "dest"
    res = run(capsysbinary, "extract", archive, "/", "-o", dest)
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    assert (dest / "ok").read_bytes() == b"fine\n" and (dest / "last").read_bytes() == b"end\n"
    for name in ("nul-link", "dev-huge", "dev-negative"):  # left out of the index, each with a warning
        assert not os.path.lexists(dest / name) and name in res.err, name
    if os.geteuid() == 0:  # owners are only set by root: there, ids past 32 bits skip the entry
        assert res.rc == 1 and not (dest / "pax-uid").exists() and not (dest / "b256-gid").exists()
        assert "pax-uid: owner 1099511627776:0" in res.err and "b256-gid: owner" in res.err
    else:
        assert res.rc == 0 and (dest / "pax-uid").read_bytes() == b"a"
