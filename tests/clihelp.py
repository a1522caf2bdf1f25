"""Helpers for the CLI tests: run `imgfs` in-process, and write small (possibly hostile) image archives.

Shared by the tests of every folder (tests/ is on the path): `from clihelp import run`.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import io
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import termios
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgfs.cli import main


@dataclass
class Result:
    """Exit status and output of one in-process run."""

    rc: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        """stdout decoded."""
        return self.out.decode("utf-8")

    @property
    def lines(self) -> list[str]:
        """stdout lines."""
        return self.text.splitlines()

    def json(self) -> object:
        """stdout parsed as one JSON document."""
        return json.loads(self.out)


# The tests never touch the user's index cache: one private cache for the test process.
CACHE = tempfile.mkdtemp(prefix="imgfs-test-cache-")
atexit.register(shutil.rmtree, CACHE, True)


def run(capsys: pytest.CaptureFixture[bytes], *argv: object) -> Result:
    """Run main() with `argv` (paths allowed) under capsysbinary, with the private cache."""
    capsys.readouterr()
    rc = main(["--cache-dir", CACHE, *[str(a) for a in argv]])
    cap = capsys.readouterr()
    return Result(rc, cap.out, cap.err.decode("utf-8", "replace"))


def run_on_terminal(args: list[str], columns: int = 80) -> tuple[int, list[str]]:
    """Run `python -m imgfs ARGS` with stdout and stderr on a pseudo-terminal `columns` wide (TIOCSWINSZ);
    its exit status and output lines."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"IMGFS_CACHE_DIR": CACHE}
    proc = subprocess.Popen([sys.executable, "-m", "imgfs", *args], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env=env)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        rc = proc.wait(timeout=60)
    return rc, b"".join(chunks).decode("utf-8").splitlines()


def assert_one_line_error(res: Result, *needles: str, rc: int = 1) -> None:
    """A failure reported as a single 'imgfs: ...' line on stderr, nothing on stdout, no traceback."""
    assert res.rc == rc, res
    assert "Traceback" not in res.err
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgfs: "), res.err
    assert res.out == b""
    for n in needles:
        assert n in res.err, (n, res.err)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def docker_archive(path: Path, layers: list[bytes], tag: str = "hostile:latest",
                   history: list[str] | None = None, omit: set[int] | None = None,
                   manifest_bytes: bytes | None = None) -> Path:
    """Write a docker-archive (manifest.json + config + layer tars) holding one image made of `layers`.

    `omit` leaves the layers at those positions out; `manifest_bytes` replaces manifest.json.
    """
    diff_ids = ["sha256:" + hashlib.sha256(la).hexdigest() for la in layers]
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": c} for c in (history or [f"step {i + 1}" for i in range(len(layers))])]}
    cfg = json.dumps(config).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    names = [f"{d[7:]}/layer.tar" for d in diff_ids]
    manifest = [{"Config": cfg_name, "RepoTags": [tag], "Layers": names}]
    with tarfile.open(path, "w") as tf:
        _add(tf, "manifest.json", manifest_bytes if manifest_bytes is not None else json.dumps(manifest).encode())
        _add(tf, cfg_name, cfg)
        for i, (name, data) in enumerate(zip(names, layers, strict=True)):
            if i not in (omit or set()):
                _add(tf, name, data)
    return path
