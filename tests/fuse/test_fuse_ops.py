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
from imgfs.fuse.layout import Layout, dir_name, unique_names
from imgfs.fuse.mounting import fuse_options
from imgfs.fuse.ops import ImgfsOps


def ops_for(archive: Path, **select: str) -> tuple[imgfs.Archive, ImgfsOps]:
    a = imgfs.open_archive(archive, use_cache=False)
    return a, ImgfsOps(Layout(a, a.select(**select)), str(archive), logging.getLogger("imgfs.test"))


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
        stack = [b"/"]
        while stack:
            path = stack.pop()
            for name, mode, ino in ops.readdir(path)[2:]:
                child = (b"" if path == b"/" else path) + b"/" + name
                st = ops.getattr(child)
                assert st[0] == ino and stat.S_IFMT(st[1]) == mode
                if owner.setdefault(ino, child) != child:  # only hard links share, inside one tree
                    assert stat.S_ISREG(st[1]) and st[2] > 1
                    assert tree_of(owner[ino]) == tree_of(child)
                if stat.S_ISDIR(mode):
                    stack.append(child)
        assert len(owner) > 1000


def test_refusals_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    a, ops = ops_for(IMAGES / "seed.docker-oci.tar")
    with a:
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_APPEND, os.O_RDONLY | os.O_TRUNC):
            with pytest.raises(OSError) as e:
                ops.open(b"/merged/app/trace.log", flags)
            assert code(e) == errno.EROFS
        for op, args in [("mkdir", (b"/merged/x", 0o755)), ("unlink", (b"/merged/app/trace.log",)),
                         ("write", (b"/merged/app/trace.log", b"x", 0, 0)), ("setxattr", (b"/", b"user.a", b"")),
                         ("chmod", (b"/merged", 0o777)), ("rename", (b"/merged/app", b"/merged/b"))]:
            with pytest.raises(OSError) as e:
                getattr(ops, op)(*args)
            assert code(e) == errno.EROFS, op
        with pytest.raises(OSError) as e:
            ops.access(b"/merged/app/trace.log", os.W_OK)
        assert code(e) == errno.EROFS
        assert ops.access(b"/merged/app/trace.log", os.R_OK) == 0
        for path in (b"/nope", b"/merged/nope", b"/layers/nope/x", b"/config.json/x", b"/merged/app/trace.log/x"):
            with pytest.raises(OSError) as e:
                ops.getattr(path)
            assert code(e) == errno.ENOENT, path
        with pytest.raises(OSError) as e:
            ops.readdir(b"/config.json")
        assert code(e) == errno.ENOTDIR
        with pytest.raises(OSError) as e:
            ops.readlink(b"/merged/app")
        assert code(e) == errno.EINVAL
        with pytest.raises(OSError) as e:
            ops.open(b"/merged/app", os.O_RDONLY)
        assert code(e) == errno.EISDIR
        fh = ops.open(b"/config.json", os.O_RDONLY)
        assert ops.locate_read(fh, 10, 0) == a.image().desc.config_bytes[:10]
        ops.release(fh)
        fh = ops.open(b"/merged/app/trace.log", os.O_RDONLY)
        fd, pos, n = ops.locate_read(fh, 4096, 2)
        assert os.pread(fd, n, pos) == b"ace\n"
        assert ops.locate_read(fh, 4096, 6)[2] == 0
        with pytest.raises(OSError) as e:
            ops.locate_read(fh, 10, -1)  # never what precedes the file in the archive
        assert code(e) == errno.EINVAL
        ops.release(fh)


def test_unreadable_layer_is_eio_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "seed.tar"
    data = (IMAGES / "seed.skopeo-oci-gzip.tar").read_bytes()
    with imgfs.open_archive(IMAGES / "seed.skopeo-oci-gzip.tar", use_cache=False) as a:
        blob = a.reader.slice(a.image().layers[-1].member)
        start = blob.base
    # Garble the top layer's gzip stream: its tree cannot be built, everything else stays readable.
    broken.write_bytes(data[:start + 20] + bytes(200) + data[start + 220:])
    a, ops = ops_for(broken)
    with a, caplog.at_level(logging.ERROR, logger="imgfs.test"):
        top = sorted(n for n in ops.layout.nodes if n.startswith(b"/layers/4"))[0]
        for _ in range(3):
            with pytest.raises(OSError) as e:
                ops.readdir(top)
            assert code(e) == errno.EIO
        assert len([r for r in caplog.records if "layers/4" in r.getMessage()]) == 1
        assert ops.readdir(b"/layers/1 Imported from -")


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
    opts = fuse_options("/x/a,b.tar", "nonempty,max_read=65536", allow_other=False)
    assert opts["fsname"] == "/x/a\\,b.tar" and opts["ro"] and opts["use_ino"] and opts["kernel_cache"]
    assert opts["nonempty"] is True and opts["max_read"] == "65536" and "allow_other" not in opts
    assert fuse_options("a.tar", None, allow_other=True)["default_permissions"] is True
    with pytest.raises(imgfs.ImgfsError, match="read-only"):
        fuse_options("a.tar", "rw", allow_other=False)


def test_importing_imgfs_fuse_does_not_load_libfuse() -> None:
    code_ = "import sys, imgfs.fuse, imgfs.fuse.ops, imgfs.fuse.layout; assert 'fuse' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code_]).returncode == 0
