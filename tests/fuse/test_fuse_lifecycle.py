"""Mounting and unmounting: the seed scenario through the CLI, signals, dead mounts, and clear errors."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import imgfs.fuse
from conftest import IMAGES
from imgfs.errors import ImgfsError
from truthlib import load_truth

SEED = IMAGES / "seed.docker-oci.tar"
IMGFS = [sys.executable, "-m", "imgfs"]


def cli(*args: str | Path, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `imgfs ARGS` in a subprocess."""
    return subprocess.run([*IMGFS, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def env(tmp_path: Path) -> dict:
    """The environment for CLI runs: a private index cache."""
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))


def test_seed_scenario_end_to_end(mounter, tmp_path: Path, env: dict, tools) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    mounter.points.append(mp)  # unmounted at the end whatever happens
    res = cli("mount", SEED, mp, env=env)
    assert res.returncode == 0, res.stderr
    assert tools.is_mounted(mp)
    found = subprocess.run(["find", mp, "-name", "trace.log"], capture_output=True, text=True, check=True)
    hits = sorted(found.stdout.split("\n")[:-1])
    assert hits == [str(mp / "layers" / "4 RUN sh -c 'echo trace > \u2215app\u2215trace.log'" / "app/trace.log"),
                    str(mp / "merged/app/trace.log")]
    subprocess.run(["cp", hits[-1], tmp_path / "trace.log"], check=True)
    want = load_truth("seed.rootfs.umoci.jsonl")["/app/trace.log"]["sha256"]
    assert hashlib.sha256((tmp_path / "trace.log").read_bytes()).hexdigest() == want
    res = cli("umount", mp, env=env)
    assert res.returncode == 0, res.stderr
    assert not tools.is_mounted(mp) and os.listdir(mp) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_mount_unmounts_on_signal(sig: int, mounter, tmp_path: Path, env: dict, tools) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    mounter.points.append(mp)
    proc = subprocess.Popen([*IMGFS, "mount", "-f", str(SEED), str(mp)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        tools.wait_for(lambda: proc.poll() is not None or os.path.ismount(mp), what="the foreground mount")
        assert (mp / "merged/app/trace.log").read_bytes() == b"trace\n"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not tools.is_mounted(mp)


def test_background_daemon_unmounts_on_sigterm(mounter, tools) -> None:
    mp = mounter(SEED)
    pid = tools.daemon_pid(mp.with_name(mp.name + ".log"))
    assert os.getsid(pid) != os.getsid(0)  # detached from the caller's session
    os.kill(pid, signal.SIGTERM)
    tools.wait_for(lambda: not tools.is_mounted(mp), what="the unmount")
    tools.wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the daemon to exit")
    assert "unmounted" in mp.with_name(mp.name + ".log").read_text()


def test_dead_mount_is_reported_cleared_and_remountable(mounter, tools) -> None:
    mp = mounter(SEED)
    pid = tools.daemon_pid(mp.with_name(mp.name + ".log"))
    os.kill(pid, signal.SIGKILL)
    tools.wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the daemon to die")
    with pytest.raises(OSError) as e:
        os.listdir(mp)
    assert e.value.errno == errno.ENOTCONN
    with pytest.raises(ImgfsError, match="dead mount"):
        imgfs.fuse.mount(str(SEED), str(mp))
    imgfs.fuse.umount(str(mp))
    assert not tools.is_mounted(mp)
    mounter(SEED, mountpoint=mp)
    assert (mp / "merged/app/trace.log").read_bytes() == b"trace\n"


def test_busy_mount_needs_lazy_unmount(mounter, tools) -> None:
    mp = mounter(SEED)
    with open(mp / "merged/app/trace.log", "rb") as fh:
        with pytest.raises(ImgfsError, match="busy"):
            imgfs.fuse.umount(str(mp))
        imgfs.fuse.umount(str(mp), lazy=True)
        assert fh.read() == b"trace\n"  # an open file stays readable until it is closed
    tools.wait_for(lambda: not tools.is_mounted(mp), what="the lazy unmount")


def test_mount_errors(mounter, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive" * 40)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ((SEED, tmp_path / "missing"), {}, "does not exist"),
        ((SEED, tmp_path / "file"), {}, "not a directory"),
        ((SEED, full), {}, "not empty"),
        ((bad, empty), {}, "bad.tar"),
        ((tmp_path / "nope.tar", empty), {}, "nope.tar"),
        ((IMAGES / "multi.docker-oci.tar", empty), {"image": "nginx"}, "nginx"),
        ((SEED, empty), {"options": "rw"}, "read-only"),
        ((SEED, empty), {"log_file": str(tmp_path / "no/such/dir/log")}, "log file"),
    ]
    for args, kw, message in cases:
        with pytest.raises(ImgfsError, match=message):
            imgfs.fuse.mount(*map(str, args), **kw)
    assert os.listdir(empty) == [] and not os.path.ismount(empty)
    mp = mounter(SEED)
    with pytest.raises(ImgfsError, match="already a mount point"):
        imgfs.fuse.mount(str(SEED), str(mp))
    with pytest.raises(ImgfsError, match="not mounted"):
        imgfs.fuse.umount(str(empty))
    with pytest.raises(ImgfsError, match="does not exist"):
        imgfs.fuse.umount(str(tmp_path / "missing"))


def test_nonempty_option_mounts_over_files(mounter, tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "hidden").write_text("x")
    mounter(SEED, mountpoint=full, options="nonempty")
    assert sorted(os.listdir(full)) == ["config.json", "layers", "manifest.json", "merged"]


def _without(tmp_path: Path, soname: str, module: str | None) -> dict[str, str]:
    """PYTHONPATH for a Python in which loading `soname` (and importing `module`) is impossible."""
    site = tmp_path / f"no-{soname}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import ctypes, sys\n"
        f"if {module!r} != 'None':\n    sys.modules[{module!r}] = None  # import fails\n"
        "_init = ctypes.CDLL.__init__\n"
        "def _refuse(self, name, *a, **k):\n"
        f"    if name and {soname!r} in str(name):\n"
        f"        raise OSError({soname!r} + ': cannot open shared object file: No such file or directory')\n"
        "    _init(self, name, *a, **k)\n"
        "ctypes.CDLL.__init__ = _refuse\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), *sys.path])}


@pytest.mark.parametrize("version", [2, 3])
def test_missing_libfuse_is_one_clear_line(version: int, tmp_path: Path, env: dict) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    soname = "libfuse.so.2" if version == 2 else "libfuse3.so.3"
    res = cli("mount", "--fuse", str(version), SEED, mp, env=dict(env, **_without(tmp_path, soname, None)))
    assert res.returncode != 0
    hint = "apt-get install libfuse2" if version == 2 else "apt-get install fuse3 libfuse3-3"
    assert res.stderr.count("\n") == 1 and hint in res.stderr, res.stderr
    assert not os.path.ismount(mp)


def test_mount_works_where_only_libfuse_3_can_be_loaded(mounter, tmp_path: Path, env: dict, tools) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    mounter.points.append(mp)
    only3 = dict(env, **_without(tmp_path, "libfuse.so.2", "fuse"))  # neither libfuse 2 nor fusepy
    only3.pop("IMGFS_FUSE", None)
    version = cli("--version", env=only3)
    assert "FUSE: libfuse 3." in version.stdout and "--fuse 2" not in version.stdout, version
    res = cli("mount", SEED, mp, env=only3)
    assert res.returncode == 0, res.stderr
    assert (mp / "merged/app/trace.log").read_bytes() == b"trace\n"
    assert cli("umount", mp, env=only3).returncode == 0
    assert not tools.is_mounted(mp)


def test_missing_dev_fuse_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, need_fuse: None) -> None:
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/dev/fuse" else real_exists(p))
    with pytest.raises(ImgfsError, match="/dev/fuse"):
        imgfs.fuse.mount(str(SEED), str(tmp_path))


@pytest.mark.parametrize("mode", [[], ["-f"]])
def test_libfuse_refusal_is_one_clear_line(mode: list[str], tmp_path: Path, env: dict, need_fuse: None) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    res = cli("mount", *mode, "-o", "no_such_option", SEED, mp, env=env)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "unknown option" in res.stderr and "no_such_option" in res.stderr
    assert not os.path.ismount(mp)
