"""Every fixture archive mounted for real: merged/ against the rootfs truth, layers/* against the raw members.

The mount is read with ordinary system calls only (os.walk, lstat, readlink, open, getxattr).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import imgfs
from conftest import IMAGES, TRUTH, archives
from imgfs.fuse.layout import unique_names
from truthlib import Listing, diff, listing_from_dir, load_truth


def _platform(entry: dict) -> str | None:
    p = entry.get("platform") or entry.get("config_platform")
    if not p:
        return None
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def members_listing(members: list[dict]) -> Listing:
    """What a layer directory must show: every member (the last of a name wins), hard links grouped."""
    last = {}
    for m in members:
        name = _clean(m["name"])
        if name not in ("", "."):
            last["/" + name] = m
    out: Listing = {}
    groups: dict[str, list[str]] = {}
    for path, m in last.items():
        if m["type"] == "hardlink":
            groups.setdefault("/" + _clean(m["linkname"]), []).append(path)
            continue
        r = {"path": path, "type": m["type"], "mode": m["mode"], "uid": m["uid"], "gid": m["gid"],
             "size": m["size"] if m["type"] == "file" else 0, "mtime": int(m["mtime"])}
        if m["type"] == "symlink":
            r["linkname"] = m["linkname"]
        if m["type"] == "file":
            r["sha256"] = m["sha256"]
        if m["type"] in ("char", "block"):
            r["devmajor"], r["devminor"] = m["devmajor"], m["devminor"]
        if m.get("xattrs"):
            r["xattrs"] = m["xattrs"]
        out[path] = r
    for target, links in groups.items():
        paths = sorted([target, *links], key=os.fsencode)
        base = out[target]
        for n, p in enumerate(paths):
            r = dict(base, path=p, nlink=len(paths))
            if n:
                r.update(type="hardlink", linkname=paths[0])
            out[p] = r
    return out


def layer_members(archive: str) -> dict[str, list[dict]]:
    """diff_id -> raw member list, from the archive's layers truth."""
    out = {}
    with open(TRUTH / f"{archive}.layers.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            out[rec["diff_id"]] = rec["members"]
    return out


def check_layer_dir(path: Path, members: list[dict]) -> list[str]:
    """Differences between a mounted layer directory and its tar's members."""
    want = members_listing(members)
    got = listing_from_dir(path)
    problems = []
    for p in [p for p in got if p not in want and p != "/"]:
        # Parents the tar does not list are implied: plain root-owned 0755 directories.
        r = got.pop(p)
        if r["type"] != "dir" or r["mode"] != "0755" or not any(w.startswith(p + "/") for w in want):
            problems.append(f"{p}: unexpected entry {r}")
    return problems + diff(want, got)


def selected(archive_path: Path, platform: str | None, cache: Path) -> list[tuple[imgfs.Image, str]]:
    """The images a mount shows and the directory each sits in ('' for a single image at the root)."""
    with imgfs.open_archive(archive_path, cache_dir=cache) as a:
        chosen = a.select(None, platform)
        names = [""] if len(chosen) == 1 else unique_names(chosen)
        return [(img, name) for img, name in zip(chosen, names, strict=True)]


@pytest.mark.parametrize("archive", archives())
def test_mount_matches_truth(archive: str, index: dict, mounter, index_cache: Path) -> None:
    entries = index[archive]["images"]
    members = layer_members(archive)
    seen_diff_ids = set()
    for platform in sorted({None} | {_platform(e) for e in entries if _platform(e) not in (None, "linux/amd64")},
                           key=str):
        mp = mounter(IMAGES / archive, platform=platform)
        shown = selected(IMAGES / archive, platform, index_cache)
        top_names = sorted(n for _, n in shown) if len(shown) > 1 else ["config.json", "layers", "manifest.json",
                                                                          "merged"]
        assert sorted(os.listdir(mp)) == top_names
        for img, dirname in shown:
            top = mp / dirname
            chain = [layer.diff_id for layer in img.layers]
            entry = next((e for e in entries if e["diff_ids"] == chain
                          and _platform(e) in (None, img.platform)), None)
            assert entry is not None, f"{archive}: no truth for {img.label}"
            seen_diff_ids.add(tuple(chain))
            problems = diff(load_truth(entry["rootfs_truth"][0]), listing_from_dir(top / "merged"))
            assert not problems, f"{archive} {img.label} merged/:\n" + "\n".join(problems[:20])
            assert sorted(os.listdir(top / "layers")) == sorted(la.name for la in img.layers)
            for layer in img.layers:
                problems = check_layer_dir(top / "layers" / layer.name, members[layer.diff_id])
                assert not problems, f"{archive} {img.label} layer {layer.name}:\n" + "\n".join(problems[:20])
            assert json.loads((top / "config.json").read_bytes()) == img.config
    assert seen_diff_ids == {tuple(e["diff_ids"]) for e in entries}, "some image of the archive was not mounted"
