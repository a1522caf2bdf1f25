"""The merged view on synthetic layer stacks: one test or more per rule 8-22 of docs/LAYER-RULES.md."""

from __future__ import annotations

import tarfile

import pytest

from imgfs.tree import Tree, layer_tree, merged_tree
from tarmaker import OPQ, WH, BytesSource, D, F, H, Member, S, index_of, merge, tar_of


def paths(tree: Tree) -> set[str]:
    """Every path of a tree except the root."""
    return {p.decode() for p, _ in tree.walk() if p}


def content(tree: Tree, path: str) -> bytes:
    """A regular file's bytes, read through the tree."""
    ref = tree.lookup(path)
    assert ref is not None, f"{path} is missing"
    assert tree.entry(path).kind == "file", f"{path} is a {tree.entry(path).kind}"
    return b"".join(tree.read_all(ref))


def kind(tree: Tree, path: str) -> str | None:
    """The kind of the entry at `path` (no link following), or None."""
    e = tree.entry(path)
    return e.kind if e else None


BASE: list[Member] = [D("etc"), F("etc/passwd", b"root"), F("etc/group", b"wheel"), D("usr"), D("usr/lib"),
                      F("usr/lib/libc.so", b"libc"), D("data"), D("data/sub"), F("data/sub/deep", b"deep"),
                      F("data/top", b"top")]


# -- rule 8: whiteouts --------------------------------------------------------------------------------------
def test_whiteout_removes_a_file_and_a_whole_tree() -> None:
    t = merge(BASE, [WH("etc/group"), WH("data")])
    assert "etc/group" not in paths(t) and "etc/passwd" in paths(t)
    assert not any(p == "data" or p.startswith("data/") for p in paths(t))


@pytest.mark.parametrize("wh", ["nothing", "etc/nothing", "nodir/x", "etc/passwd/x", "a/b/c/d"])
def test_whiteout_of_a_missing_path_is_a_no_op(wh: str) -> None:
    assert paths(merge(BASE, [WH(wh)])) == paths(merge(BASE))


# -- rule 9: opaque directories -------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_opaque_marker_anywhere_in_tar_order(where: str) -> None:
    own = [D("data", mode=0o700), F("data/new", b"new"), D("data/newdir"), F("data/newdir/f", b"f")]
    at = {"first": 0, "middle": 2, "last": len(own)}[where]
    layer = own[:at] + [OPQ("data")] + own[at:]
    t = merge(BASE, layer)
    assert {p for p in paths(t) if p.startswith("data/")} == {"data/new", "data/newdir", "data/newdir/f"}
    assert t.entry("data").mode == 0o700  # the directory stays, with this layer's attributes


def test_opaque_marker_keeps_same_named_children_of_this_layer() -> None:
    t = merge(BASE, [D("data"), F("data/top", b"new top"), OPQ("data")])
    assert content(t, "data/top") == b"new top"
    assert "data/sub" not in paths(t)


@pytest.mark.parametrize("name", [".wh..wh..opqX", ".wh..wh..opq.bak", ".wh..wh.opq"])
def test_near_opaque_names_are_not_opaque(name: str) -> None:
    t = merge(BASE, [D("data"), F(f"data/{name}", mode=0o600)])
    assert {"data/top", "data/sub/deep"} <= paths(t)
    assert not any(".wh." in p for p in paths(t))  # rule 11: still never shown


def test_opaque_marker_of_a_directory_missing_below() -> None:
    t = merge(BASE, [D("fresh"), OPQ("fresh"), F("fresh/a", b"a")])
    assert {"fresh", "fresh/a"} <= paths(t)


def test_opaque_then_lower_dir_replaced_by_upper_ones() -> None:
    # Three layers: the opaque marker hides layer 1's children only; layer 3 adds to it normally.
    t = merge(BASE, [D("data"), OPQ("data"), F("data/two", b"2")], [D("data"), F("data/three", b"3")])
    assert {p for p in paths(t) if p.startswith("data/")} == {"data/two", "data/three"}


# -- rule 10: whiteouts never hide their own layer -------------------------------------------------------------
@pytest.mark.parametrize("order", ["whiteout-first", "whiteout-last"])
def test_whiteout_never_hides_its_own_layer(order: str) -> None:
    own = [D("etc"), F("etc/group", b"recreated"), D("data"), D("data/sub"), F("data/sub/x", b"x")]
    marks = [WH("etc/group"), WH("data")]
    t = merge(BASE, marks + own if order == "whiteout-first" else own + marks)
    assert content(t, "etc/group") == b"recreated"
    assert content(t, "data/sub/x") == b"x"
    assert "data/sub/deep" not in paths(t) and "data/top" not in paths(t)


# -- rules 11 and 12: marker files are never shown -------------------------------------------------------------
def test_aufs_bookkeeping_is_never_shown() -> None:
    t = merge(BASE, [D(".wh..wh.plnk"), F(".wh..wh..aufs"), D("etc"), F("etc/.wh..wh.aufs", mode=0o600)])
    assert paths(t) == paths(merge(BASE))


def test_aufs_hardlink_directory_contents_are_never_shown() -> None:
    # AUFS keeps hard-link bookkeeping as files *inside* .wh..wh.plnk/.
    t = merge(BASE, [D(".wh..wh.plnk"), F(".wh..wh.plnk/1234.5678", b"x")])
    assert not any(".wh." in p for p in paths(t)), sorted(p for p in paths(t) if ".wh." in p)


def _markers_of_every_type() -> list[Member]:
    """Whiteout and opaque markers as a directory, a symlink and files."""
    link = tarfile.TarInfo("etc/.wh.passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "elsewhere"
    return [D(".wh.dirmarker"), (link, None), F("data/.wh..wh..opq"), F(".wh.nothing")]


def test_markers_are_never_in_the_merged_view_even_in_layer_1() -> None:
    t = merge(BASE + _markers_of_every_type())
    assert not any(".wh." in p for p in paths(t))
    assert {"etc/passwd", "data/top"} <= paths(t)  # markers in layer 1 hide nothing


def test_markers_whatever_their_tar_type_still_act() -> None:
    t = merge(BASE, _markers_of_every_type())
    assert "etc/passwd" not in paths(t) and "data/top" not in paths(t)
    assert not any(".wh." in p for p in paths(t))


def test_layer_view_shows_the_markers() -> None:
    data = [tar_of(BASE), tar_of([WH("etc/group"), OPQ("data"), D("data"), F("data/n", b"n")])]
    idx = [index_of(d) for d in data]
    src = [BytesSource(d) for d in data]
    lt = layer_tree(1, idx, src)
    assert {"etc/.wh.group", "data/.wh..wh..opq", "data/n"} <= paths(lt)
    assert "etc/passwd" not in paths(lt)  # a layer view holds only that layer's members


@pytest.mark.parametrize("name", [".wh...", ".wh.."])
def test_escaping_whiteout_is_reported(name: str) -> None:
    t = merge(BASE, [D("data"), F(f"data/{name}", mode=0o600)])
    assert paths(t) == paths(merge(BASE))  # never removes the parent or anything else
    assert t.warnings


@pytest.mark.parametrize("name", [".wh.", "data/.wh."])
def test_bare_whiteout_is_reported(name: str) -> None:
    t = merge(BASE, [F(name, mode=0o600)])
    assert paths(t) == paths(merge(BASE))
    assert t.warnings


# -- rule 13: whiteouts at symlinks ------------------------------------------------------------------------------
def test_whiteout_at_a_symlink_hides_the_link_only() -> None:
    t = merge(BASE + [S("lib", "usr/lib"), S("etcl", "/etc")], [WH("lib"), WH("etcl")])
    assert "lib" not in paths(t) and "etcl" not in paths(t)
    assert content(t, "usr/lib/libc.so") == b"libc" and content(t, "etc/passwd") == b"root"


def test_opaque_marker_at_a_symlink_does_not_follow_it() -> None:
    t = merge(BASE + [S("lib", "usr/lib")], [D("lib"), OPQ("lib"), F("lib/new", b"n")])
    assert kind(t, "lib") == "dir" and content(t, "lib/new") == b"n"
    assert content(t, "usr/lib/libc.so") == b"libc"


# -- rule 14: entries over existing paths ------------------------------------------------------------------------
def test_dir_over_dir_merges_children_and_replaces_attributes() -> None:
    t = merge(BASE, [D("data", mode=0o1777, uid=7, gid=8, mtime=1234), F("data/added", b"a")])
    e = t.entry("data")
    assert (e.mode, e.uid, e.gid, e.mtime) == (0o1777, 7, 8, 1234)
    assert {"data/top", "data/sub/deep", "data/added"} <= paths(t)


@pytest.mark.parametrize("upper", [F("data", b"now a file"), S("data", "etc"), H("data", "etc/passwd")],
                         ids=["file", "symlink", "hardlink"])
def test_non_dir_over_dir_removes_the_subtree(upper: Member) -> None:
    t = merge(BASE, [upper])
    assert not any(p.startswith("data/") for p in paths(t))
    assert kind(t, "data") in ("file", "symlink")


def test_dir_over_file_replaces_it() -> None:
    t = merge(BASE, [D("etc/passwd"), F("etc/passwd/inside", b"i")])
    assert kind(t, "etc/passwd") == "dir" and content(t, "etc/passwd/inside") == b"i"


def test_file_over_file_replaces_content_and_attributes() -> None:
    t = merge(BASE, [F("etc/passwd", b"changed", mode=0o600, uid=3)])
    assert content(t, "etc/passwd") == b"changed"
    assert (t.entry("etc/passwd").mode, t.entry("etc/passwd").uid) == (0o600, 3)


# -- rule 15: implied parents -------------------------------------------------------------------------------------
def test_implied_parent_keeps_the_lower_directory() -> None:
    base = [D("opt", mode=0o750, uid=5, mtime=99)]
    t = merge(base, [F("opt/new/file", b"x")])
    e = t.entry("opt")
    assert (e.kind, e.mode, e.uid, e.mtime) == ("dir", 0o750, 5, 99)
    new = t.entry("opt/new")
    assert (new.kind, new.mode, new.uid, new.gid) == ("dir", 0o755, 0, 0)


def test_implied_parents_without_any_lower_directory() -> None:
    t = merge([F("a/b/c/file", b"x")])
    for p in ("a", "a/b", "a/b/c"):
        e = t.entry(p)
        assert (e.kind, e.mode, e.uid, e.gid) == ("dir", 0o755, 0, 0)
    assert t.listdir("a/b") == [b"c"]


# -- rule 16: the same path twice in one tar ----------------------------------------------------------------------
@pytest.mark.parametrize("first,second,want", [
    (F("x", b"one"), F("x", b"two"), "file"), (F("x", b"one"), D("x"), "dir"), (D("x"), F("x", b"two"), "file"),
    (S("x", "t"), F("x", b"two"), "file"), (F("x", b"one"), S("x", "t"), "symlink"),
], ids=["file-file", "file-dir", "dir-file", "link-file", "file-link"])
def test_same_path_twice_later_wins(first: Member, second: Member, want: str) -> None:
    t = merge(BASE, [first, second])
    assert kind(t, "x") == want
    if want == "file":
        assert content(t, "x") == b"two"


def test_same_dir_twice_keeps_children_of_both() -> None:
    t = merge([D("d", mode=0o700), F("d/a", b"a"), D("d", mode=0o711), F("d/b", b"b")])
    assert t.entry("d").mode == 0o711 and {"d/a", "d/b"} <= paths(t)


# -- rule 17: symlinked parents in lower layers ---------------------------------------------------------------------
def test_write_through_a_relative_symlinked_parent() -> None:
    t = merge(BASE + [S("lib", "usr/lib")], [F("lib/x", b"x")])
    assert content(t, "usr/lib/x") == b"x"
    assert kind(t, "lib") == "symlink" and "lib/x" not in paths(t)


def test_write_through_an_absolute_symlinked_parent_stays_in_the_root() -> None:
    t = merge(BASE + [S("conf", "/etc")], [F("conf/added", b"a")])
    assert content(t, "etc/added") == b"a"
    assert kind(t, "conf") == "symlink"


@pytest.mark.parametrize("target", ["../../..", "/../../..", "../../../../etc", "usr/../../.."])
def test_symlinked_parent_cannot_escape(target: str) -> None:
    t = merge(BASE + [D("a"), S("a/up", target)], [F("a/up/escaped", b"e")])
    # Wherever the file lands, it is inside the tree: every path is relative and free of '..'.
    landed = [p for p in paths(t) if p.endswith("escaped")]
    assert len(landed) == 1
    assert ".." not in landed[0].split("/")
    assert content(t, landed[0]) == b"e"


def test_symlink_chain_as_parent() -> None:
    t = merge(BASE + [S("l1", "l2"), S("l2", "usr/lib")], [F("l1/via-chain", b"c")])
    assert content(t, "usr/lib/via-chain") == b"c"


@pytest.mark.parametrize("links", [[S("loop", "loop")], [S("a", "b"), S("b", "a")], [S("a", "/a/b")]],
                         ids=["self", "pair", "into-itself"])
def test_symlink_cycle_as_parent_terminates(links: list[Member]) -> None:
    t = merge(BASE + links, [F(f"{links[0][0].name}/file", b"f")])
    landed = [p for p in paths(t) if p.endswith("/file")]
    assert len(landed) == 1 and content(t, landed[0]) == b"f"


# -- rule 18: names and the root -------------------------------------------------------------------------------------
def test_dot_entry_sets_root_attributes() -> None:
    t = merge([D(".", mode=0o700, uid=9, mtime=42), F("./a", b"a")], [D("./", mode=0o711)])
    e = t.entry("/")
    assert (e.kind, e.mode) == ("dir", 0o711)
    assert content(t, "a") == b"a"


@pytest.mark.parametrize("entry", [F(".", b"not a dir"), S(".", "elsewhere"), F("./", b"x"), S("/", "x")],
                         ids=["file", "symlink", "file-slash", "symlink-slash"])
def test_dot_never_changes_the_root_type(entry: Member) -> None:
    t = merge(BASE, [entry])
    assert t.entry("").kind == "dir"
    assert paths(t) == paths(merge(BASE))


def test_prefixed_and_doubled_names_merge_into_one_path() -> None:
    t = merge([D("./etc"), F("./etc/a", b"1")], [F("/etc//a", b"2"), F("etc/./b", b"b")])
    assert content(t, "etc/a") == b"2" and content(t, "etc/b") == b"b"
    assert t.listdir("etc") == [b"a", b"b"]


# -- rule 20: xattrs ------------------------------------------------------------------------------------------------
def test_xattrs_reach_the_merged_tree_and_follow_replacements() -> None:
    ti, body = F("bin/ping", b"elf")
    ti.pax_headers = {"SCHILY.xattr.security.capability": "cap", "SCHILY.xattr.user.x": "1"}
    t = merge([(ti, body)])
    assert t.xattrs(t.lookup("bin/ping")) == {"security.capability": b"cap", "user.x": b"1"}
    t2 = merge([(ti, body)], [F("bin/ping", b"new")])
    assert t2.xattrs(t2.lookup("bin/ping")) == {}


# -- rule 21: hard links --------------------------------------------------------------------------------------------
def test_hardlink_to_a_lower_layer_file() -> None:
    t = merge(BASE, [H("etc/passwd-link", "etc/passwd")])
    assert content(t, "etc/passwd-link") == b"root"
    a, b = t.entry("etc/passwd-link"), t.entry("etc/passwd")
    assert a.ino == b.ino and a.nlink == b.nlink == 2


def test_hardlink_resolves_as_of_its_layer() -> None:
    # Layer 3 replaces the target: the link made in layer 2 keeps the content it had then.
    t = merge(BASE, [H("keep", "etc/passwd")], [F("etc/passwd", b"changed later")])
    assert content(t, "keep") == b"root"
    assert content(t, "etc/passwd") == b"changed later"
    assert t.entry("keep").ino != t.entry("etc/passwd").ino
    assert t.entry("keep").nlink == 1 and t.entry("etc/passwd").nlink == 1


def test_deferred_hardlink_finds_its_parent_recreated_in_the_same_layer() -> None:
    # d -> b (a lower layer's symlink); the link waits for its target t, and meanwhile b is replaced by a
    # file and made a directory again. The link still lands in the new b, as sequential extraction does.
    t = merge([S("d", "b"), D("b")], [H("d/c", "t"), F("b"), D("b"), F("t", b"x")])
    assert content(t, "b/c") == b"x" and t.warnings == []
    assert t.entry("b/c").ino == t.entry("t").ino and t.entry("t").nlink == 2


def test_a_link_still_waiting_replaces_nothing() -> None:
    # a/a waits for b; `a -> a` then finds a directory (a/a's parent, implied), so it waits too, and a link
    # that is not placed cannot replace a/a. At the end a/a gets b; `a -> a` never finds a file.
    t = merge([F("a", b"A"), H("a/a", "b"), F("b", b"B"), H("a", "a")])
    assert content(t, "a/a") == b"B" and t.entry("b").nlink == 2 and t.entry("a").kind == "dir"
    assert [w for w in t.warnings if "hard link /a -> a" in w]
    # Placed, the same link does replace what waits below it: here `a -> t` finds t at once.
    t = merge([F("t", b"T"), H("a/a", "b"), H("a", "t"), F("b", b"B")])
    assert content(t, "a") == b"T" and t.lookup("a/a") is None and t.warnings == []


def test_hardlink_target_removed_later_keeps_the_link() -> None:
    t = merge(BASE, [H("keep", "etc/group")], [WH("etc/group")])
    assert content(t, "keep") == b"wheel" and "etc/group" not in paths(t)


def test_hardlink_target_after_the_link_in_tar_order() -> None:
    t = merge(BASE, [H("early", "late"), F("late", b"content")])
    assert content(t, "early") == b"content"
    assert t.entry("early").ino == t.entry("late").ino and t.entry("late").nlink == 2


def test_hardlink_group_of_three_in_one_layer() -> None:
    t = merge([D("a"), D("b"), F("a/orig", b"same"), H("a/l1", "a/orig"), H("b/l2", "./a/orig")])
    inos = {t.entry(p).ino for p in ("a/orig", "a/l1", "b/l2")}
    assert len(inos) == 1 and t.entry("b/l2").nlink == 3 and content(t, "b/l2") == b"same"


def test_hardlink_to_nothing_is_left_out_with_a_warning() -> None:
    t = merge(BASE, [H("dangling", "no/such/file")])
    assert "dangling" not in paths(t)
    assert any("dangling" in w for w in t.warnings)


def test_deferred_hardlink_does_not_override_a_later_entry() -> None:
    t = merge(BASE, [H("h", "t"), F("t", b"target"), F("h", b"later h")])
    assert content(t, "h") == b"later h"


def test_later_entry_overrules_a_pending_hardlink_by_replacing_its_parent() -> None:
    # The later file 'a' replaces the directory the pending link 'a/h' was in.
    t = merge([D("a"), F("a/x", b"x")], [H("a/h", "t"), F("t", b"T"), F("a", b"now a file")])
    assert content(t, "a") == b"now a file"
    assert "a/h" not in paths(t)


def test_later_entry_overrules_a_pending_hardlink_by_implying_it_as_a_parent() -> None:
    # 'a/a' comes later and needs 'a' as a directory: the link waiting at 'a' is overruled, not applied on top.
    t = merge([H("a", "a/a"), F("a/a", b"inner")])
    assert content(t, "a/a") == b"inner" and kind(t, "a") == "dir"


def test_later_symlink_overrules_a_pending_hardlink_in_the_directory_it_replaces() -> None:
    # 'b' becomes a symlink to the file 'a': the link waiting at 'b/a' must not land through it on 'a'.
    t = merge([H("b/a", "a"), F("a", b"file a"), S("b", "a")])
    assert content(t, "a") == b"file a" and kind(t, "b") == "symlink"


@pytest.mark.parametrize("lower", [[], [D("d")]], ids=["same-layer-dir", "lower-dir"])
def test_pending_hardlink_survives_its_directory_restated(lower: list[Member]) -> None:
    t = merge(*([lower] if lower else []), [D("d"), H("d/h", "t"), D("d", mode=0o700), F("t", b"T")])
    assert content(t, "d/h") == b"T" and t.entry("d").mode == 0o700


def test_pending_hardlink_survives_a_later_root_entry() -> None:
    t = merge([H("h", "t"), D(".", mode=0o700), F("t", b"T")])
    assert content(t, "h") == b"T" and t.entry("").mode == 0o700


def test_pending_hardlink_yields_to_a_later_entry_below_it() -> None:
    t = merge([D("a"), H("a", "t"), F("a/x", b"X"), F("t", b"T")])
    assert content(t, "a/x") == b"X" and kind(t, "a") == "dir"


def test_layer_view_resolves_hardlinks_to_lower_layers() -> None:
    data = [tar_of(BASE), tar_of([H("etc/pl", "etc/passwd")])]
    idx = [index_of(d) for d in data]
    src = [BytesSource(d) for d in data]
    _, refs = merged_tree(idx, src)
    lt = layer_tree(1, idx, src, lambda: refs)
    assert content(lt, "etc/pl") == b"root"


# -- rule 22: symlink targets as written, resolution inside the root --------------------------------------------------
def test_symlink_targets_are_kept_as_written() -> None:
    targets = ["/etc/passwd", "../x/../y", "./rel", "/", "no/such", "a//b/"]
    t = merge([S(f"l{n}", tg) for n, tg in enumerate(targets)])
    assert [t.entry(f"l{n}").linkname for n in range(len(targets))] == [tg.encode() for tg in targets]
    assert [t.entry(f"l{n}").size for n in range(len(targets))] == [len(tg) for tg in targets]


def test_resolve_stays_inside_the_root() -> None:
    t = merge(BASE + [S("abs", "/etc/passwd"), S("up", "../../../../etc"), D("d"), S("d/rel", "../usr/lib"),
                      S("dangling", "/no/such"), S("loop1", "loop2"), S("loop2", "loop1"), S("self", ".")])
    assert t.resolve("abs") == b"etc/passwd"
    assert t.resolve("up/passwd") == b"etc/passwd"
    assert t.resolve("d/rel/libc.so") == b"usr/lib/libc.so"
    assert t.resolve("self/self/self/etc") == b"etc"
    assert t.resolve("dangling") is None
    assert t.resolve("loop1") is None  # a cycle ends, it does not hang
    assert t.resolve("abs", follow_last=False) == b"abs"
    assert t.resolve("/../../etc/passwd") == b"etc/passwd"
