"""Listings in the schema of the fixtures' truth files, from a Tree or from a directory on disk."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

from conftest import TRUTH, truth_index
from imgfs.tree import Tree

Listing = dict[str, dict]


def _name(raw: bytes, key: str) -> dict:
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {key: raw.decode("utf-8", "backslashreplace"), key + "_b64": base64.b64encode(raw).decode()}


def _finish(recs: list[dict], groups: dict) -> Listing:
    """Hard-link groups become one 'file' record plus 'hardlink' records, as truth.py writes them."""
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda r: r["_raw"])
        for m in members[1:]:
            m["type"] = "hardlink"
            m["linkname"] = members[0]["path"]
        for m in members:
            m["nlink"] = len(members)
    out = {}
    for r in recs:
        r.pop("_raw", None)
        out[r["path"]] = r
    return out


def load_truth(name: str) -> Listing:
    """A rootfs truth file (path -> record)."""
    out = {}
    with open(TRUTH / name, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            out[r["path"]] = r
    return out


def listing_from_tree(tree: Tree) -> Listing:
    """The tree's records, with content hashes read through the tree."""
    recs, groups = [], {}
    for key, ref in tree.walk():
        e = tree.entry_for(key, ref)
        raw = b"/" + key
        r = dict(_name(raw, "path"), _raw=raw, type=e.kind, mode=f"{e.mode:04o}", uid=e.uid, gid=e.gid,
                 size=e.size if e.kind == "file" else 0, mtime=int(e.mtime))
        if e.kind == "symlink":
            r.update(_name(e.linkname or b"", "linkname"))
        if e.device is not None and e.kind in ("char", "block"):
            r["devmajor"], r["devminor"] = e.device
        if e.kind == "file":
            h = hashlib.sha256()
            for chunk in tree.read_all(ref):
                h.update(chunk)
            r["sha256"] = h.hexdigest()
            if e.nlink > 1:
                groups.setdefault(e.ino, []).append(r)
        xa = tree.xattrs(ref)
        if xa:
            r["xattrs"] = {k: base64.b64encode(v).decode() for k, v in xa.items()}
        recs.append(r)
    return _finish(recs, groups)


def listing_from_dir(root: str | os.PathLike[str]) -> Listing:
    """The records of a directory tree on disk (a mount), read with ordinary system calls."""
    root_b = os.fsencode(Path(root))
    recs, groups = [], {}

    def one(abspath: bytes, rel: bytes) -> None:
        st = os.lstat(abspath)
        raw = rel or b"/"
        r = dict(_name(raw, "path"), _raw=raw, mode=f"{stat.S_IMODE(st.st_mode):04o}", uid=st.st_uid,
                 gid=st.st_gid, size=0, mtime=int(st.st_mtime))
        m = st.st_mode
        if stat.S_ISDIR(m):
            r["type"] = "dir"
        elif stat.S_ISLNK(m):
            r["type"] = "symlink"
            r.update(_name(os.readlink(abspath), "linkname"))
        elif stat.S_ISREG(m):
            r["type"] = "file"
            r["size"] = st.st_size
            h = hashlib.sha256()
            with open(abspath, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            r["sha256"] = h.hexdigest()
            if st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(r)
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            r["type"] = "char" if stat.S_ISCHR(m) else "block"
            r["devmajor"], r["devminor"] = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(m):
            r["type"] = "fifo"
        try:
            names = os.listxattr(abspath, follow_symlinks=False)
        except OSError:
            names = []
        xa = {n: base64.b64encode(os.getxattr(abspath, n, follow_symlinks=False)).decode() for n in names}
        if xa:
            r["xattrs"] = xa
        recs.append(r)

    one(root_b, b"")
    for dirpath, dirnames, filenames in os.walk(root_b):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            one(p, p[len(root_b):])
    return _finish(recs, groups)


def diff(want: Listing, got: Listing, skip_root: bool = True) -> list[str]:
    """Human-readable differences between two listings (empty when equal)."""
    out = []
    for p in sorted(set(want) | set(got)):
        if skip_root and p == "/":
            continue
        w, g = want.get(p), got.get(p)
        if w != g:
            out.append(f"{p}:\n  want {w}\n  got  {g}")
    return out


def image_truth(name: str) -> Listing:
    """The merged-root truth of a fixture archive's first image."""
    return load_truth(truth_index()[name]["images"][0]["rootfs_truth"][0])


def portable(listing: Listing) -> Listing:
    """Without root, owners (and device nodes) cannot be kept by an extraction: compare everything else."""
    if os.geteuid() == 0:
        return listing
    return {p: {k: v for k, v in r.items() if k not in ("uid", "gid")} for p, r in listing.items()
            if r["type"] not in ("char", "block")}
