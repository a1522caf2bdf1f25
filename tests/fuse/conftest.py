"""Fixtures for real FUSE mounts: every mount made through them is unmounted, even when a test fails.

(No helper module here: a package named `fuse` under tests/ would shadow fusepy's `fuse` module.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import imgfs.fuse


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """Whether /proc/mounts lists `path` (true as well for a mount whose process died)."""
    target = os.fsencode(os.path.abspath(path)).replace(b" ", b"\\040")
    with open("/proc/mounts", "rb") as fh:
        return any(line.split(b" ")[1] == target for line in fh)


def force_unmount(path: str | os.PathLike[str]) -> None:
    """fusermount -u, then the lazy -uz if the mount is still there."""
    for args in (["-u"], ["-uz"]):
        if not is_mounted(path):
            return
        subprocess.run(["fusermount3" if shutil.which("fusermount3") else "fusermount", *args, str(path)],
                       capture_output=True)


def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `check` until it is true, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def daemon_pid(log_file: Path) -> int:
    """The mount process's pid, from the first line it logs ('imgfs[PID]: INFO mounted ...')."""
    m = re.search(r"imgfs\[(\d+)\]: INFO mounted", log_file.read_text())
    assert m, log_file.read_text()
    return int(m.group(1))


class Mounter:
    """Mounts archives under a test's tmp_path and remembers them for the cleanup."""

    def __init__(self, base: Path, cache: Path) -> None:
        self.base = base
        self.cache = cache
        self.points: list[Path] = []

    def __call__(self, archive: str | os.PathLike[str], mountpoint: Path | None = None, **kw: object) -> Path:
        """Mount in the background (the tests' own index cache; a log file next to the mountpoint)."""
        mp = mountpoint or self.base / f"mnt{len(self.points)}"
        mp.mkdir(exist_ok=True)
        self.points.append(mp)
        kw.setdefault("cache_dir", str(self.cache))
        kw.setdefault("log_file", str(mp.with_name(mp.name + ".log")))
        imgfs.fuse.mount(str(archive), str(mp), **kw)  # type: ignore[arg-type]
        return mp

    def cleanup(self) -> None:
        for mp in self.points:
            force_unmount(mp)


BACKENDS = (3, 2)


@pytest.fixture(autouse=True, params=BACKENDS, ids=[f"fuse{v}" for v in BACKENDS])
def fuse_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every FUSE test runs under libfuse 3 and under libfuse 2 ($IMGFS_FUSE reaches CLI subprocesses too)."""
    monkeypatch.setenv("IMGFS_FUSE", str(request.param))
    return request.param


@pytest.fixture(scope="session")
def index_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One index cache for the FUSE tests (never the user's): archives mounted twice are indexed once."""
    return tmp_path_factory.mktemp("imgfs-cache")


@pytest.fixture
def mounter(need_fuse: None, tmp_path: Path, index_cache: Path) -> Iterator[Mounter]:
    """mounter(archive, **mount_kwargs) -> mountpoint; all unmounted at the end of the test."""
    m = Mounter(tmp_path, index_cache)
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture(scope="session")
def tools() -> SimpleNamespace:
    """The helpers above, for test modules (which cannot import this conftest by name)."""
    return SimpleNamespace(is_mounted=is_mounted, force_unmount=force_unmount, wait_for=wait_for,
                           daemon_pid=daemon_pid)
