"""Real processes: the installed `imgfs` console script, `python -m imgfs`, pipes closed early, the TTY layout."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.clihelp import CACHE
from conftest import IMAGES

SEED = str(IMAGES / "seed.docker-oci.tar")
SCRIPT = shutil.which("imgfs", path=str(Path(sys.executable).parent)) or shutil.which("imgfs")


ENV = dict(os.environ, IMGFS_CACHE_DIR=CACHE)  # the private test cache, never the user's


def _run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=60, check=False, env=ENV)


@pytest.mark.skipif(SCRIPT is None, reason="imgfs console script not installed")
def test_console_script_find_answers_the_seed_question():
    res = _run([SCRIPT, "find", SEED, "--name", "trace.log"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines() == [
        "4 RUN sh -c 'echo trace > \u2215app\u2215trace.log'\t/app/trace.log", "merged\t/app/trace.log"]
    assert res.stderr == b""


def test_python_dash_m_and_errors_without_traceback(tmp_path):
    res = _run([sys.executable, "-m", "imgfs", "cat", SEED, "/app/trace.log"])
    assert (res.returncode, res.stdout) == (0, b"trace\n")
    res = _run([sys.executable, "-m", "imgfs", "cat", SEED, "/app"])
    assert res.returncode == 1 and res.stderr == b"imgfs: /app: is a directory\n"
    bad = tmp_path / "bad.tar"
    bad.write_bytes(os.urandom(5000))
    res = _run([sys.executable, "-m", "imgfs", "ls", str(bad)])
    assert res.returncode == 1 and res.stderr.count(b"\n") == 1 and b"Traceback" not in res.stderr
    res = _run([sys.executable, "-m", "imgfs", "bogus"])
    assert res.returncode == 2 and b"Traceback" not in res.stderr


def test_output_pipe_closed_early_exits_quietly():
    """`imgfs cat ... | head -c 10` and `imgfs find ... | head -1`: no traceback, no noise."""
    for args in (["cat", SEED, "/bin/busybox"], ["find", SEED]):
        proc = subprocess.Popen([sys.executable, "-m", "imgfs", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=ENV)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(10)
        proc.stdout.close()
        err = proc.stderr.read()
        rc = proc.wait(timeout=60)
        assert err == b"", err
        assert rc in (0, 141)  # 0 when everything fit in the pipe before it was closed


def test_terminal_gets_header_and_aligned_columns():
    """On a TTY: a header line, aligned columns and human sizes; the plain form is tested elsewhere."""
    pid, fd = pty.fork()
    if pid == 0:  # child: stdout and stderr are the pty
        os.execve(sys.executable, [sys.executable, "-m", "imgfs", "layers", SEED], ENV)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lines = b"".join(chunks).decode().splitlines()
    assert lines[0].split() == ["#", "NAME", "DIGEST", "SIZE", "ENTRIES", "FILES", "BYTES", "WASTED",
                                 "CREATED", "COMMAND"]
    assert "\t" not in "".join(lines)
    assert lines[1].startswith("1  1 Imported from -") and " 2.0M " in lines[1] and "d7757ec0e982 " in lines[1]
    assert lines[4].index("ab33c891bd44") == lines[1].index("d7757ec0e982")


@pytest.mark.skipif(SCRIPT is None, reason="imgfs console script not installed")
def test_console_script_exits_fast_without_losing_output_or_status():
    # The script leaves with os._exit (no interpreter teardown): every byte must still arrive, and the status.
    archive = str(IMAGES / "multi.docker-oci.tar")
    argv = ["find", archive, "--image", "seed:latest", "--json"]
    fast = _run([SCRIPT, *argv])
    slow = _run([sys.executable, "-c", f"import sys; from imgfs.cli import main; sys.exit(main({argv!r}))"])
    assert fast.returncode == slow.returncode == 0, fast.stderr
    assert len(fast.stdout) > 100_000 and fast.stdout == slow.stdout
    res = _run([SCRIPT, "cat", archive, "/nope"])
    assert res.returncode == 1 and res.stderr.startswith(b"imgfs: ")
