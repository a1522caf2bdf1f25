"""What the mount answers to system calls: metadata, links, inodes, xattrs, devices, writes, statfs, layout."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

import imgfs
from conftest import IMAGES
from tarmaker import END, ArchiveBuilder, config_for, member, pax
from truthlib import load_truth

SEED = IMAGES / "seed.docker-oci.tar"
TRACE = "4 RUN sh -c 'echo trace > \u2215app\u2215trace.log'"

# A layer with what the fixtures lack: devices, xattrs, a name that is not UTF-8, a PAX long name.
ODD_LAYER = b"".join([
    member(b"dev/", typeflag=b"5", mode=0o755),
    member(b"dev/null", typeflag=b"3", mode=0o666, devmajor=1, devminor=3),
    member(b"dev/sda", typeflag=b"4", mode=0o660, gid=6, devmajor=8, devminor=0),
    member(b"dev/pipe", typeflag=b"6", mode=0o600),
    pax({b"SCHILY.xattr.user.comment": b"hello\0world", b"SCHILY.xattr.user.empty": b""}),
    member(b"bin/ping", b"PING", mode=0o4755),
    member(b"caf\xe9.txt", b"a latin-1 name"),
    member(b"secret", b"top secret", mode=0o000, uid=1000, gid=1000),
    pax({b"path": b"deep/" + b"d" * 150 + b"/long.txt"}),
    member(b"placeholder", b"long name"),
    pax({b"mtime": b"-1.5"}),
    member(b"before-1970", b"old"),
    pax({b"mtime": b"1700000000.25"}),
    member(b"fraction", b"new"),
    member(b"../escaped", b"outside"),
    member(b"etc/../../../escaped2", b"outside"),
]) + END


def mount_line(mp: Path) -> list[str]:
    """The /proc/mounts fields of a mount point."""
    return next(ln.split() for ln in Path("/proc/mounts").read_text().splitlines() if ln.split()[1] == str(mp))


@pytest.fixture
def odd_archive(tmp_path: Path) -> Path:
    b = ArchiveBuilder()
    entry = b.docker_image([ODD_LAYER], ["odd:1"], config_for([ODD_LAYER]))
    b.add("manifest.json", [entry])
    return Path(b.save(tmp_path / "odd.tar"))


@pytest.fixture
def seed(mounter) -> Path:
    return mounter(SEED)


def test_writes_are_refused_with_erofs(seed: Path) -> None:
    f = seed / "merged/app/trace.log"
    d = seed / "merged/app"
    attempts = {
        "open w": lambda: os.open(f, os.O_WRONLY),
        "open a": lambda: os.open(f, os.O_WRONLY | os.O_APPEND),
        "open rw": lambda: os.open(f, os.O_RDWR),
        "open trunc": lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
        "create": lambda: os.open(d / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL),
        "mkdir": lambda: os.mkdir(d / "newdir"),
        "unlink": lambda: os.unlink(f),
        "rmdir": lambda: os.rmdir(seed / "merged/tmp"),
        "rename": lambda: os.rename(f, d / "moved"),
        "chmod": lambda: os.chmod(f, 0o600),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, (0, 0)),
        "truncate": lambda: os.truncate(f, 0),
        "symlink": lambda: os.symlink("x", d / "ln"),
        "link": lambda: os.link(f, d / "hl"),
        "mknod": lambda: os.mkfifo(d / "fifo"),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
        "removexattr": lambda: os.removexattr(f, "user.x"),
        "skeleton": lambda: os.open(seed / "config.json", os.O_WRONLY),
        "skeleton mkdir": lambda: os.mkdir(seed / "layers/new"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, what
    assert os.access(f, os.R_OK) and not os.access(f, os.W_OK)
    assert f.read_bytes() == b"trace\n"


def test_layout_config_and_manifest(seed: Path) -> None:
    with imgfs.open_archive(SEED, use_cache=False) as a:
        img = a.image()
        assert sorted(os.listdir(seed)) == ["config.json", "layers", "manifest.json", "merged"]
        assert sorted(os.listdir(seed / "layers")) == [la.name for la in img.layers]
        assert (seed / "config.json").read_bytes() == img.desc.config_bytes
        manifest = (seed / "manifest.json").read_bytes()
        assert "sha256:" + hashlib.sha256(manifest).hexdigest() == img.digest
        assert [la["digest"] for la in json.loads(manifest)["layers"]] == [la.digest for la in img.layers]
    for name in ("config.json", "manifest.json"):
        st = os.stat(seed / name)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444


def test_legacy_manifest_is_the_manifest_json_entry(mounter) -> None:
    mp = mounter(IMAGES / "seed.docker-legacy.tar")
    doc = json.loads((mp / "manifest.json").read_bytes())
    assert doc["RepoTags"] == ["seed:latest"]
    assert len(doc["Layers"]) == 4 and all(p.endswith("/layer.tar") for p in doc["Layers"])
    config = json.loads((mp / "config.json").read_bytes())
    assert hashlib.sha256((mp / "config.json").read_bytes()).hexdigest() + ".json" == doc["Config"]
    assert config["rootfs"]["diff_ids"][-1].startswith("sha256:")


def test_several_images_get_one_directory_each(mounter) -> None:
    mp = mounter(IMAGES / "multi.docker-oci.tar")
    names = sorted(os.listdir(mp))
    assert names == sorted(["seed:latest", "whiteout:latest", "example.com\u2215corpus\u2215links:1.0"])
    for n in names:
        assert sorted(os.listdir(mp / n)) == ["config.json", "layers", "manifest.json", "merged"]
    assert (mp / "seed:latest/merged/app/trace.log").read_bytes() == b"trace\n"
    one = mounter(IMAGES / "multi.docker-oci.tar", image="whiteout:latest")
    assert sorted(os.listdir(one)) == ["config.json", "layers", "manifest.json", "merged"]


def test_metadata_of_special_entries(mounter) -> None:
    mp = mounter(IMAGES / "meta.docker-oci.tar")
    truth = load_truth("meta.rootfs.umoci.jsonl")
    fifos = [p for p, r in truth.items() if r["type"] == "fifo"]
    assert fifos
    for p in fifos:
        assert stat.S_ISFIFO(os.lstat(mp / "merged" / p.lstrip("/")).st_mode)  # never opened: nothing is behind it
    zero = [p for p, r in truth.items() if r["type"] == "file" and r["mode"] == "0000"]
    assert zero and all(  # the mounting user reads every file, whatever its mode (no default_permissions)
        hashlib.sha256((mp / "merged" / p.lstrip("/")).read_bytes()).hexdigest() == truth[p]["sha256"] for p in zero)


def test_devices_xattrs_odd_names(mounter, odd_archive: Path) -> None:
    root = mounter(odd_archive) / "merged"
    null, sda = os.lstat(root / "dev/null"), os.lstat(root / "dev/sda")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_ISBLK(sda.st_mode) and (os.major(sda.st_rdev), os.minor(sda.st_rdev)) == (8, 0)
    assert stat.S_IMODE(sda.st_mode) == 0o660 and sda.st_gid == 6
    assert stat.S_ISFIFO(os.lstat(root / "dev/pipe").st_mode)
    with pytest.raises(OSError):  # fusermount mounts nodev: a device node opens nothing
        (root / "dev/null").read_bytes()
    ping = root / "bin/ping"
    assert sorted(os.listxattr(ping)) == ["user.comment", "user.empty"]
    assert os.getxattr(ping, "user.comment") == b"hello\0world" and os.getxattr(ping, "user.empty") == b""
    with pytest.raises(OSError) as e:
        os.getxattr(ping, "user.missing")
    assert e.value.errno == errno.ENODATA
    assert stat.S_IMODE(os.lstat(ping).st_mode) == 0o4755
    assert b"caf\xe9.txt" in os.listdir(os.fsencode(root))
    with open(os.fsencode(root) + b"/caf\xe9.txt", "rb") as fh:
        assert fh.read() == b"a latin-1 name"
    secret = os.lstat(root / "secret")
    assert (stat.S_IMODE(secret.st_mode), secret.st_uid, secret.st_gid) == (0, 1000, 1000)
    assert (root / "secret").read_bytes() == b"top secret"
    assert (root / ("deep/" + "d" * 150 + "/long.txt")).read_bytes() == b"long name"
    assert os.lstat(root / "before-1970").st_mtime_ns == -1_500_000_000
    assert os.lstat(root / "fraction").st_mtime_ns == 1_700_000_000_250_000_000
    everything = [n for _, dirs, files in os.walk(root.parent) for n in dirs + files]
    assert not [n for n in everything if n.startswith("escaped")]  # names climbing out are never shown


def test_inodes_stable_unique_and_shared_by_hard_links(mounter) -> None:
    mp = mounter(IMAGES / "links.docker-oci.tar")
    truth = load_truth("links.rootfs.umoci.jsonl")
    merged = mp / "merged"
    for p, r in truth.items():
        if r["type"] == "hardlink":
            a, b = os.lstat(merged / p.lstrip("/")), os.lstat(merged / r["linkname"].lstrip("/"))
            assert (a.st_ino, a.st_nlink) == (b.st_ino, r["nlink"])
    # Every inode is one entry's, except hard links, which share one inside the same tree.
    seen: dict[int, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(mp):
        for n in [".", *dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, n))
            st = os.lstat(path)
            rel = os.path.relpath(path, mp).split("/")
            tree = "/".join(rel[:2] if rel[0] == "layers" else rel[:1])
            first = seen.setdefault(st.st_ino, (tree, path))
            if first[1] != path:
                assert stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and first[0] == tree, \
                    f"{path} shares inode {st.st_ino} with {first[1]}"
    again = {os.lstat(merged / p.lstrip("/")).st_ino for p in truth if p != "/"}
    assert again <= set(seen)  # stable: the same numbers on a second look


def test_symlinks_read_back_as_stored(mounter) -> None:
    mp = mounter(IMAGES / "links.docker-oci.tar")
    truth = load_truth("links.rootfs.umoci.jsonl")
    links = {p: r["linkname"] for p, r in truth.items() if r["type"] == "symlink"}
    assert any(t.startswith("/") for t in links.values())
    for p, target in links.items():
        assert os.readlink(mp / "merged" / p.lstrip("/")) == target


def test_statfs_and_mount_options(seed: Path) -> None:
    st = os.statvfs(seed)
    assert st.f_flag & os.ST_RDONLY and st.f_namemax == 255 and st.f_blocks > 0
    line = mount_line(seed)
    assert line[0] == str(SEED) and line[2] == "fuse.imgfs"
    opts = line[3].split(",")
    assert "ro" in opts and "default_permissions" not in opts and "allow_other" not in opts


def _read_as_nobody(path: Path) -> str:
    """Read a file as uid/gid 65534: 'ok' or the error's name."""
    res = subprocess.run(["cat", str(path)], user=65534, group=65534, extra_groups=[], capture_output=True)
    if res.returncode == 0:
        return "ok"
    return "denied" if b"denied" in res.stderr else res.stderr.decode()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to read as another user")
def test_other_users_get_exactly_what_modes_allow(mounter, tmp_path: Path) -> None:
    truth = load_truth("meta.rootfs.umoci.jsonl")
    public = next(p for p, r in truth.items() if r["type"] == "file" and r["mode"] == "0644" and p.count("/") == 2)
    private = next(p for p, r in truth.items() if r["type"] == "file" and r["mode"] == "0000")
    world = Path(tempfile.mkdtemp(prefix="imgfs-allow-other-"))  # pytest's tmp dirs are closed to others
    try:
        world.chmod(0o755)
        alone = mounter(IMAGES / "meta.docker-oci.tar", mountpoint=world / "alone")
        shared = mounter(IMAGES / "meta.docker-oci.tar", mountpoint=world / "shared", allow_other=True)
        assert "allow_other" in mount_line(shared)[3].split(",") and "default_permissions" in mount_line(shared)[3]
        assert _read_as_nobody(alone / "merged" / public.lstrip("/")) == "denied"  # only the mounting user
        assert _read_as_nobody(shared / "merged" / public.lstrip("/")) == "ok"
        assert _read_as_nobody(shared / "merged" / private.lstrip("/")) == "denied"  # mode 0000 means it
        assert (shared / "merged" / private.lstrip("/")).read_bytes() is not None  # root still reads
    finally:
        mounter.cleanup()
        shutil.rmtree(world, ignore_errors=True)


def test_readdir_types_match_stat(seed: Path) -> None:
    root = seed / "merged"
    for dirpath, _, _ in os.walk(root):
        with os.scandir(dirpath) as it:
            for e in it:
                st = os.lstat(e.path)
                assert e.inode() == st.st_ino
                assert e.is_dir(follow_symlinks=False) == stat.S_ISDIR(st.st_mode)
                assert e.is_symlink() == stat.S_ISLNK(st.st_mode)


def test_random_access_reads(mounter) -> None:
    mp = mounter(IMAGES / "meta.docker-oci.tar")
    truth = load_truth("meta.rootfs.umoci.jsonl")
    big = max((r for r in truth.values() if r["type"] == "file"), key=lambda r: r["size"])
    path = mp / "merged" / big["path"].lstrip("/")
    data = path.read_bytes()
    assert len(data) == big["size"] >= 1 << 20 and hashlib.sha256(data).hexdigest() == big["sha256"]
    with open(path, "rb", buffering=0) as fh:
        for off, n in [(0, 1), (4095, 2), (131071, 131074), (len(data) - 3, 100), (len(data), 10), (777777, 12345)]:
            fh.seek(off)
            assert fh.read(n) == data[off:off + n]


def test_owner_and_umask_options_as_libfuse_applies_them(mounter, tmp_path: Path) -> None:
    mp = mounter(SEED, options="umask=027,uid=1234,gid=4321")
    for p in (mp / "merged" / "app" / "trace.log", mp / "merged" / "bin", mp / "config.json"):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o750), p
    assert stat.S_ISLNK(os.lstat(mp / "merged" / "bin" / "sh").st_mode)  # the type bits stay
    assert (mp / "merged" / "app" / "trace.log").read_bytes() == b"trace\n"
    for bad in ("umask=9", "uid=x", "gid=-1", "uid"):
        with pytest.raises(imgfs.ImgfsError, match=bad.split("=")[0]):
            mounter(SEED, mountpoint=tmp_path / "other", options=bad)
