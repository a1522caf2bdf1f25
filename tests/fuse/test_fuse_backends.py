"""What each backend sends and what the mount refuses: READDIRPLUS, broken layers, signals, umount, trust."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import imgfs.archive
import imgfs.fuse
from conftest import IMAGES
from imgfs.errors import ImgfsError, UsageError
from imgfs.fuse.inodes import Inodes, max_layers
from imgfs.fuse.mounting import fuse_options
from tarmaker import END, ArchiveBuilder, config_for, member, pax

SEED = IMAGES / "seed.docker-oci.tar"
IMGFS = [sys.executable, "-m", "imgfs"]


def test_a_first_find_over_merged_sends_no_lookup_for_what_readdirplus_returned(mounter, fuse_backend) -> None:
    mp = mounter(SEED, debug=True)
    log = mp.with_name(mp.name + ".log")
    merged = mp / "merged"
    os.stat(merged)
    before = len(log.read_text().splitlines())
    found = subprocess.run(["find", merged], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(found) > 100
    dirs = {os.lstat(p).st_ino for p in found if os.path.isdir(p) and not os.path.islink(p)}  # cached: no request
    size = -1
    while size != log.stat().st_size:  # libfuse's own lines come through a thread under --debug
        size = log.stat().st_size
        time.sleep(0.3)
    lines = log.read_text().splitlines()[before:]
    lookups = [m for m in (re.search(r"DEBUG LOOKUP (\d+) ", ln) for ln in lines) if m]
    inside = [m.group(0) for m in lookups if int(m.group(1)) in dirs]
    if fuse_backend == 3:
        assert any("READDIRPLUS" in ln for ln in lines)
        assert inside == [], inside[:5]
    else:  # libfuse 2 has no READDIRPLUS: one LOOKUP per entry, which is what the test above would catch
        assert len(inside) >= len(found) - 1


def test_zero_round_trip_opens_are_logged_as_such(mounter, tools) -> None:
    mp = mounter(SEED, debug=True)
    (mp / "merged/app/trace.log").read_bytes()
    os.listdir(mp / "merged/etc")
    log = mp.with_name(mp.name + ".log")
    said = r"opcode: OPENDIR .*\n\s*unique: \d+, ENOSYS: opened without a round trip"
    tools.wait_for(lambda: re.search(said, log.read_text()), what="libfuse's lines, reworded, in the log")
    assert not re.search(r"opcode: OPEN(DIR)? .*\n\s*unique: \d+, error: -38", log.read_text())


def test_a_layer_that_cannot_be_read_leaves_layers_served_and_merged_eio(mounter, monkeypatch) -> None:
    def broken(self: imgfs.archive.Image) -> None:
        raise ImgfsError("layer 4 (blobs/sha256/x) cannot be read: gzip trailer missing")

    monkeypatch.setattr(imgfs.archive.Image, "merged", broken)  # the daemon is forked from here: it has it too
    mp = mounter(SEED)
    layers = sorted(os.listdir(mp / "layers"))
    assert (mp / "layers" / layers[-1] / "app/trace.log").read_bytes() == b"trace\n"
    for _ in range(3):
        with pytest.raises(OSError) as e:
            os.listdir(mp / "merged")
        assert e.value.errno == errno.EIO
    log = mp.with_name(mp.name + ".log").read_text()
    assert sum("layer 4 (blobs/sha256/x) cannot be read" in ln for ln in log.splitlines()) == 1, log
    assert "Traceback" not in log


def test_sigterm_ends_the_mount_within_a_second_while_merged_is_built(mounter, monkeypatch, tools) -> None:
    def slow(self: imgfs.archive.Image) -> None:
        time.sleep(60)  # a build that takes long: the request that needs it waits for it

    monkeypatch.setattr(imgfs.archive.Image, "merged", slow)
    mp = mounter(SEED)
    pid = tools.daemon_pid(mp.with_name(mp.name + ".log"))
    waiting = threading.Thread(target=lambda: subprocess.run(["ls", mp / "merged"], capture_output=True),
                               daemon=True)
    waiting.start()
    time.sleep(0.5)  # the LOOKUP of merged now waits in the daemon
    start = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    tools.wait_for(lambda: not tools.is_mounted(mp), timeout=1.0, what="the unmount within a second")
    tools.wait_for(lambda: _exited(pid), timeout=1.5, what="the daemon to exit")
    assert time.monotonic() - start < 1.5
    waiting.join(5)


def _exited(pid: int) -> bool:
    """Whether the process is gone, or dead and waiting for its parent (init here) to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_umount_refuses_what_is_not_an_imgfs_mount(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = tmp_path / "tmpfs"
        target.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "none", target], check=True)
    else:
        target = Path("/proc")
    try:
        res = subprocess.run([*IMGFS, "umount", target], capture_output=True, text=True)
        assert res.returncode == 1
        assert res.stderr.count("\n") == 1 and "not an imgfs mount" in res.stderr, res.stderr
        assert os.path.ismount(target)
    finally:
        if target != Path("/proc"):
            subprocess.run(["umount", target], check=True)


def test_dev_and_suid_need_a_trusted_image(tmp_path: Path) -> None:
    for opt in ("dev", "suid", "allow_other,dev"):
        with pytest.raises(UsageError, match="--trusted-image"):
            fuse_options(str(SEED), opt, False)
        assert "dev" in fuse_options(str(SEED), opt, False, trusted=True) or "suid" in opt
    mp = tmp_path / "mnt"
    mp.mkdir()
    res = subprocess.run([*IMGFS, "mount", "-o", "dev", SEED, mp], capture_output=True, text=True)
    assert res.returncode == 2 and "device nodes" in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not os.path.ismount(mp)
    assert "--trusted-image" in subprocess.run([*IMGFS, "mount", "--help"], capture_output=True, text=True).stdout


def test_entries_no_stat_can_carry_answer_eio_with_one_log_line(mounter, tmp_path: Path) -> None:
    layer = (member(b"d/", typeflag=b"5", mode=0o755) + pax({b"uid": str(1 << 40).encode()})
             + member(b"d/huge", b"x") + member(b"d/fine", b"ok") + END)
    b = ArchiveBuilder()
    b.add("manifest.json", [b.docker_image([layer], ["huge:1"], config_for([layer]))])
    mp = mounter(b.save(tmp_path / "huge.tar"))
    names = sorted(os.listdir(mp / "merged/d"))
    assert names == ["fine", "huge"]
    assert (mp / "merged/d/fine").read_bytes() == b"ok"
    for _ in range(2):
        with pytest.raises(OSError) as e:
            os.lstat(mp / "merged/d/huge")
        assert e.value.errno == errno.EIO
    log = mp.with_name(mp.name + ".log").read_text()
    assert "Traceback" not in log and sum("d/huge: cannot be shown" in ln for ln in log.splitlines()) == 1, log


@pytest.mark.parametrize("layers", [1, 127, 32767, 32768, max_layers()])
def test_inode_numbers_never_collide_whatever_the_layer_count(layers: int) -> None:
    trees = layers + 1  # one per layer and merged
    ino = Inodes(trees, layers)
    top_ref = (layers - 1) << 32 | (1 << 32) - 1  # the last member of the top layer
    seen = set()
    for slot in (1, trees):
        for made, want in ((ino.entry(slot, 0), (slot, False, 0)),
                           (ino.entry(slot, top_ref), (slot, False, top_ref)),
                           (ino.directory(slot, 0), (slot, True, 0)),
                           (ino.directory(slot, top_ref), (slot, True, top_ref)),
                           (ino.tree_root(slot), (slot, True, 0))):
            assert ino.decode(made) == want and 0 < made < 1 << 64
            seen.add(made)
    assert len(seen) == 8  # the two tree roots are their node 0
    assert ino.decode(12) == (0, False, 12)  # skeleton entries stay small numbers


def test_an_image_past_the_layer_limit_is_refused_clearly() -> None:
    with pytest.raises(ImgfsError, match=rf"at most {max_layers()} layers"):
        Inodes(max_layers() * 2 + 2, max_layers() * 2)
