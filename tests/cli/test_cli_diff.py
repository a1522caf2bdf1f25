"""`imgfs diff` and the totals of `imgfs layers`, checked against the truth of every fixture."""

from __future__ import annotations

import json

import pytest

from clihelp import docker_archive, run, run_on_terminal
from conftest import IMAGES, TRUTH, archives, truth_index
from tarmaker import F, S, tar_of
from truthlib import load_truth

WHITEOUT = IMAGES / "whiteout.docker-oci.tar"
SINGLE = [n for n in archives() if not n.startswith("multi.")]


def _args(name: str) -> list[str]:
    return ["--platform", "linux/amd64"] if "oci-index" in name else []


def _truth(name: str) -> dict:
    return load_truth(truth_index()[name]["images"][0]["rootfs_truth"][0])


@pytest.mark.parametrize("name", SINGLE)
def test_replaying_every_layer_diff_gives_the_merged_truth(capsysbinary, name):
    res = run(capsysbinary, "diff", IMAGES / name, "--json", *_args(name))
    assert res.rc == 0, res.err
    paths: dict[str, str] = {}
    for layer in res.json()["layers"]:
        for c in layer["changes"]:
            if c["change"] == "A":
                assert c["path"] not in paths, c
                paths[c["path"]] = c["type"]
            elif c["change"] == "M":
                assert c["path"] in paths, c
                assert (c["old_type"] or c["type"]) == paths[c["path"]]
                paths[c["path"]] = c["type"]
            else:
                assert paths.pop(c["path"]) == c["type"], c
    truth = _truth(name)
    assert paths == {p: ("file" if r["type"] == "hardlink" else r["type"]) for p, r in truth.items() if p != "/"}


@pytest.mark.parametrize("name", SINGLE)
def test_layer_totals_match_layer_members_and_final_view(capsysbinary, index, name):
    layers = run(capsysbinary, "layers", IMAGES / name, "--json", *_args(name)).json()["layers"]
    with open(TRUTH / index[name]["layers_truth"], encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    by_diff_id = {r["diff_id"]: r for r in rows}
    for la in layers:
        files = [m for m in by_diff_id[la["diff_id"]]["members"] if m["type"] == "file" and not m.get("whiteout")]
        assert (la["files"], la["bytes"]) == (len(files), sum(m["size"] for m in files)), la["name"]
    truth = _truth(name)
    visible = sum(r["size"] for r in truth.values() if r["type"] == "file")
    assert sum(la["bytes"] - la["wasted"] for la in layers) == visible
    diffed = run(capsysbinary, "diff", IMAGES / name, "--json", *_args(name)).json()["layers"]
    assert [(d["totals"]["files"], d["totals"]["bytes"], d["totals"]["wasted"]) for d in diffed] == [
        (la["files"], la["bytes"], la["wasted"]) for la in layers]


def test_whiteout_deletions_and_type_changes(capsysbinary):
    res = run(capsysbinary, "diff", WHITEOUT)
    rows = [line.split("\t") for line in res.lines]
    by_layer: dict[str, list[tuple[str, str, str, str]]] = {}
    for name, code, kind, size, _, path in rows:
        by_layer.setdefault(name.split()[0], []).append((code, kind, size, path))
    assert ("D", "symlink", "+0", "/bin/vi") in by_layer["3"]
    assert ("D", "file", "-39", "/etc/group") in by_layer["3"]
    assert {p for c, _, _, p in by_layer["3"] if c == "D" and p.startswith("/data/gone")} == {
        "/data/gone", "/data/gone/sub", "/data/gone/sub/deeper", "/data/gone/sub/deeper/y.txt",
        "/data/gone/sub/x.txt"}
    # the opaque directory hides everything that was in it
    assert {(c, p) for c, _, _, p in by_layer["4"] if p.startswith("/data/opaque/")} == {
        ("D", "/data/opaque/old"), ("D", "/data/opaque/old/o.txt"), ("D", "/data/opaque/old2.txt"),
        ("A", "/data/opaque/new.txt")}
    assert ("M", "dir->file", "+11", "/data/d2f") in by_layer["5"]
    assert ("M", "file->dir", "-5", "/data/f2d") in by_layer["5"]
    assert by_layer["6"] == [("A", "file", "+7", "/data/keep/phoenix.txt")]


def test_whiteout_wasted_bytes(capsysbinary):
    layers = run(capsysbinary, "layers", WHITEOUT, "--json").json()["layers"]
    # layer 2 wrote 48 bytes in 9 files; all but a.txt (5 bytes) are deleted or replaced later
    assert [(la["files"], la["bytes"], la["wasted"]) for la in layers][:2] == [(3, 1982415, 39), (9, 48, 43)]
    res = run(capsysbinary, "layers", WHITEOUT)
    assert [line.split("\t")[5:8] for line in res.lines][1] == ["9", "48", "43"]


def test_diff_one_layer_and_its_totals(capsysbinary):
    doc = run(capsysbinary, "diff", WHITEOUT, "--layer", "-1", "--json").json()
    (layer,) = doc["layers"]
    assert layer["number"] == 6
    assert layer["totals"] == {"files": 1, "bytes": 7, "wasted": 0, "added": 1, "modified": 0, "deleted": 0,
                               "deleted_bytes": 0}
    doc = run(capsysbinary, "diff", WHITEOUT, "--layer", "3", "--json").json()
    assert doc["layers"][0]["totals"]["deleted_bytes"] == 2 + 2 + 7 + 12 + 39


def test_diff_hard_link_copy_up(capsysbinary):
    res = run(capsysbinary, "diff", IMAGES / "links.docker-oci.tar", "--layer", "-1")
    rows = {line.split("\t")[5]: line.split("\t")[1:5] for line in res.lines}
    assert rows["/srv/hl-to-lower"] == ["A", "file", "+9", "-"]
    assert rows["/srv/data/orig.txt"] == ["M", "file", "+0", "-"]  # copied up into the linking layer, as it was


def test_layers_names_only(capsysbinary):
    res = run(capsysbinary, "layers", IMAGES / "seed.docker-oci.tar", "--names")
    assert res.lines == ["1 Imported from -", "2 WORKDIR \u2215app", "3 COPY ctx\u2215 \u2215app\u2215",
                         "4 RUN sh -c 'echo trace > \u2215app\u2215trace.log'"]


def test_a_chmod_or_chown_says_what_changed(capsysbinary):
    res = run(capsysbinary, "diff", IMAGES / "meta.docker-oci.tar", "--layer", "chmod 4755")
    rows = {line.split("\t")[5]: line.split("\t")[1:5] for line in res.lines}
    assert rows["/opt/meta/suid.sh"] == ["M", "file", "+0", "mode"]
    assert rows["/opt/meta/random.bin"] == ["M", "file", "+0", "owner"]  # 2 MiB read on both sides: same bytes
    assert rows["/opt/meta/empty"] == ["M", "file", "+0", "mode,owner"]
    assert rows["/opt/meta/owned"] == ["M", "dir", "+0", "owner"]
    doc = run(capsysbinary, "diff", IMAGES / "meta.docker-oci.tar", "--layer", "3", "--json").json()
    by_path = {c["path"]: c for c in doc["layers"][0]["changes"]}
    assert by_path["/opt/meta/emptydir"]["what"] == ["mode"]


def _with_xattr(m, value: str):
    m[0].pax_headers = {"SCHILY.xattr.user.k": value}
    return m


def test_diff_tells_content_mtime_target_and_xattrs_apart(capsysbinary, tmp_path):
    lower = tar_of([F("same-size", b"aaaa", mtime=5), F("grows", b"a"), F("touched", b"t", mtime=1),
                    S("link", "one"), _with_xattr(F("attrs", b"x"), "1"), F("again", b"same", mtime=3)])
    upper = tar_of([F("same-size", b"bbbb", mtime=5), F("grows", b"abc"), F("touched", b"t", mtime=2),
                    S("link", "two"), _with_xattr(F("attrs", b"x"), "2"), F("again", b"same", mtime=3)])
    archive = docker_archive(tmp_path / "d.tar", [lower, upper])
    res = run(capsysbinary, "diff", archive, "--layer", "2")
    assert res.rc == 0, res.err
    assert [line.split("\t")[1:] for line in res.lines] == [
        ["M", "file", "+0", "-", "/again"],  # written again exactly as it was: still a change the layer stores
        ["M", "file", "+0", "xattrs", "/attrs"], ["M", "file", "+2", "content", "/grows"],
        ["M", "symlink", "+0", "target", "/link"], ["M", "file", "+0", "content", "/same-size"],
        ["M", "file", "+0", "mtime", "/touched"]]


def test_counts_on_a_terminal_read_as_english():
    rc, lines = run_on_terminal(["diff", str(WHITEOUT), "--layer", "-1"], columns=200)
    assert rc == 0
    assert lines[0].endswith(": 1 file, 7 written, 0 wasted; 1 added, 0 modified, 0 deleted"), lines[0]
