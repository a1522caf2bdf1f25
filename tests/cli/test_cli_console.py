"""Real processes: the installed `imgfs` console script, `python -m imgfs`, pipes closed early, the TTY layout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clihelp import CACHE, run, run_on_terminal
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
    rc, lines = run_on_terminal(["layers", SEED], columns=250)
    assert rc == 0
    assert lines[0].split() == ["#", "NAME", "DIGEST", "SIZE", "ENTRIES", "FILES", "BYTES", "WASTED",
                                "CREATED", "COMMAND"]
    assert "\t" not in "".join(lines)
    assert lines[1].startswith("1  1 Imported from -") and " 2.0M " in lines[1] and "d7757ec0e982 " in lines[1]
    assert lines[4].index("ab33c891bd44") == lines[1].index("d7757ec0e982")


@pytest.mark.parametrize("columns", [60, 80, 120, 250])
def test_layers_on_a_terminal_fits_its_width(columns):
    # whiteout's history commands run to ~300 characters: the command gives way first, then the name
    rc, lines = run_on_terminal(["layers", str(IMAGES / "whiteout.docker-oci.tar")], columns=columns)
    assert rc == 0 and len(lines) == 7
    assert max(len(line) for line in lines) <= columns
    assert all(line.split()[0] == str(n) for n, line in enumerate(lines[1:], 1))
    assert "\u2026" in lines[2]  # a cut cell says so
    assert ("COMMAND" in lines[0]) == (columns == 250)
    assert ("DIGEST" in lines[0]) == (columns >= 80)


def test_ls_long_on_a_terminal_prints_human_sizes(capsysbinary):
    rc, lines = run_on_terminal(["ls", "-l", SEED, "/bin"], columns=100)
    assert rc == 0 and lines[0].split() == ["MODE", "UID", "GID", "SIZE", "MTIME", "NAME"]
    busybox = next(line.split() for line in lines if line.endswith(" busybox"))
    assert busybox[3] == "1.9M"
    piped = next(line.split("\t") for line in run(capsysbinary, "ls", "-l", SEED, "/bin").lines
                 if line.endswith("\tbusybox"))
    assert piped[3] == "1982256"  # a pipe gets the exact count


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
