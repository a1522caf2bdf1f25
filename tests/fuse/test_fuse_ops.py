"""The mount's answers without libfuse: ImgfsOps and Layout called directly on real archives."""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import imgfs
from conftest import IMAGES
from imgfs.fuse.inodes import MOUNT_ROOT
from imgfs.fuse.layout import Layout, dir_name, unique_names
from imgfs.fuse.mounting import fuse_options
from imgfs.fuse.ops import ImgfsOps


def ops_for(archive: Path, **select: str) -> tuple[imgfs.Archive, ImgfsOps]:
    a = imgfs.open_archive(archive, use_cache=False)
    return a, ImgfsOps(Layout(a.select(**select)), str(archive), logging.getLogger("imgfs.test"))


def tree_of(path: bytes) -> bytes:
    """The mount path of the tree holding `path` (.../merged or .../layers/NAME)."""
    parts = path.split(b"/")
    for i, p in enumerate(parts):
        if p in (b"merged", b"layers"):
            return b"/".join(parts[:i + (1 if p == b"merged" else 2)])
    return b""


def code(excinfo: pytest.ExceptionInfo) -> int:
    return excinfo.value.errno


@pytest.mark.parametrize("name", ["seed.docker-oci.tar", "links.docker-oci.tar", "meta.docker-oci.tar",
                                  "whiteout.docker-oci.tar"])
def test_tree_stat_agrees_with_entry_for(name: str) -> None:
    with imgfs.open_archive(IMAGES / name, use_cache=False) as a:
        img = a.image()
        trees = [img.merged()] + [img.layer_tree(la.position) for la in img.layers]
        for tree in trees:
            for key, ref in tree.walk():
                e = tree.entry_for(key, ref)
                rdev = os.makedev(*e.device) if e.kind in ("char", "block") else 0
                assert tree.stat(ref) == (e.st_mode, e.nlink, e.uid, e.gid, rdev, e.size, e.mtime), key


def test_inodes_are_unique_across_every_tree() -> None:
    a, ops = ops_for(IMAGES / "multi.docker-oci.tar")
    with a:
        owner: dict[int, bytes] = {}
        stack = [(b"/", MOUNT_ROOT)]
        while stack:
            path, dino = stack.pop()
            for name, mode, ino in ops.readdir(dino)[2:]:
                child = (b"" if path == b"/" else path) + b"/" + name
                assert ops.lookup(dino, name) == ino == ops.lookup_path(child)
                st = ops.getattr(ino)
                assert st[0] == ino and stat.S_IFMT(st[1]) == mode and ops.lookup_stat(dino, name) == st
                if owner.setdefault(ino, child) != child:  # only hard links share, inside one tree
                    assert stat.S_ISREG(st[1]) and st[2] > 1
                    assert tree_of(owner[ino]) == tree_of(child)
                if stat.S_ISDIR(mode):
                    stack.append((child, ino))
        assert len(owner) > 1000


def test_refusals_and_errors() -> None:
    a, ops = ops_for(IMAGES / "seed.docker-oci.tar")
    with a:
        trace = ops.lookup_path(b"/merged/app/trace.log")
        app = ops.lookup_path(b"/merged/app")
        config = ops.lookup_path(b"/config.json")
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_APPEND, os.O_RDONLY | os.O_TRUNC):
            with pytest.raises(OSError) as e:
                ops.open(trace, flags)
            assert code(e) == errno.EROFS
        with pytest.raises(OSError) as e:
            ops.access(trace, os.W_OK)
        assert code(e) == errno.EROFS
        assert ops.access(trace, os.R_OK) == 0
        for path in (b"/nope", b"/merged/nope", b"/layers/nope/x"):
            with pytest.raises(OSError) as e:
                ops.lookup_path(path)
            assert code(e) == errno.ENOENT, path
        for path in (b"/config.json/x", b"/merged/app/trace.log/x"):
            with pytest.raises(OSError) as e:
                ops.lookup_path(path)
            assert code(e) == errno.ENOTDIR, path
        for ino in (0, 999_999, 99 << 48 | 1, 1 << 48 | 1 << 40):  # never handed out
            with pytest.raises(OSError) as e:
                ops.getattr(ino)
            assert code(e) == errno.ENOENT, ino
        for ino in (config, trace):
            with pytest.raises(OSError) as e:
                ops.readdir(ino)
            assert code(e) == errno.ENOTDIR
        with pytest.raises(OSError) as e:
            ops.readlink(app)
        assert code(e) == errno.EINVAL
        for ino in (app, MOUNT_ROOT):
            with pytest.raises(OSError) as e:
                ops.open(ino, os.O_RDONLY)
            assert code(e) == errno.EISDIR
        ops.open(trace, os.O_RDONLY)
        buf = memoryview(bytearray(4096))
        assert ops.read_into(config, 10, 0, buf) == 10 and bytes(buf[:10]) == a.image().desc.config_bytes[:10]
        assert ops.read_into(trace, 4096, 2, buf) == 4 and bytes(buf[:4]) == b"ace\n"
        assert ops.read_into(trace, 4096, 6, buf) == 0
        with pytest.raises(OSError) as e:
            ops.read_into(trace, 10, -1, buf)  # never what precedes the file in the archive
        assert code(e) == errno.EINVAL
        with pytest.raises(OSError) as e:
            ops.read_into(app, 10, 0, buf)
        assert code(e) == errno.EISDIR


def test_unreadable_layer_is_eio_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "seed.tar"
    data = (IMAGES / "seed.skopeo-oci-gzip.tar").read_bytes()
    with imgfs.open_archive(IMAGES / "seed.skopeo-oci-gzip.tar", use_cache=False) as a:
        blob = a.blobs.open(a.image().layers[-1].member)
        start = blob.base
    # Garble the top layer's gzip stream: its tree cannot be built, everything else stays readable.
    broken.write_bytes(data[:start + 20] + bytes(200) + data[start + 220:])
    a, ops = ops_for(broken)
    with a, caplog.at_level(logging.ERROR, logger="imgfs.test"):
        top = sorted(n for n in ops.layout.nodes if n.startswith(b"/layers/4"))[0]
        ino = ops.lookup_path(top)  # the tree is built on first look inside, not to be named
        for _ in range(3):
            with pytest.raises(OSError) as e:
                ops.readdir(ino)
            assert code(e) == errno.EIO
        assert len([r for r in caplog.records if "layers/4" in r.getMessage()]) == 1
        assert ops.readdir(ops.lookup_path(b"/layers/1 Imported from -"))


def test_directory_names_are_unique_and_safe() -> None:
    assert dir_name("example.com/corpus/links:1.0") == "example.com\u2215corpus\u2215links:1.0"
    assert dir_name("..") == "image" and dir_name("") == "image"
    assert len(dir_name("x" * 400).encode()) == 255

    class Img:
        def __init__(self, label: str, platform: str | None) -> None:
            self.label, self.platform = label, platform

    imgs = [Img("latest", "linux/amd64"), Img("latest", "linux/arm64/v8"), Img("a", None), Img("a", None)]
    names = unique_names(imgs)  # type: ignore[arg-type]
    assert names == ["latest (linux\u2215amd64)", "latest (linux\u2215arm64\u2215v8)", "a", "a (2)"]


def test_fuse_options() -> None:
    opts = fuse_options("/x/a,b.tar", "nonempty,max_read=65536,kernel_cache,attr_timeout=1", allow_other=False)
    assert opts["fsname"] == "/x/a\\,b.tar" and opts["ro"] and opts["subtype"] == "imgfs"
    assert opts["nonempty"] is True and opts["max_read"] == "65536" and "allow_other" not in opts
    assert "kernel_cache" not in opts and "attr_timeout" not in opts  # high-level options: what it does anyway
    assert fuse_options("a.tar", None, allow_other=True)["default_permissions"] is True
    with pytest.raises(imgfs.ImgfsError, match="read-only"):
        fuse_options("a.tar", "rw", allow_other=False)


def test_importing_imgfs_fuse_does_not_load_libfuse() -> None:
    code_ = "import sys, imgfs.fuse, imgfs.fuse.ops, imgfs.fuse.layout; assert 'fuse' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code_]).returncode == 0
