"""Shared test setup: where the real fixture images and their truth live, and FUSE availability."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _find_shared() -> Path:
    """$IMGFS_SHARED, else shared/ beside this checkout, else beside the checkout it was cloned from."""
    if os.environ.get("IMGFS_SHARED"):
        return Path(os.environ["IMGFS_SHARED"])
    here = REPO.parent / "shared"
    if (here / "fixtures").is_dir():
        return here
    try:  # a clone in a temporary folder: its origin is the checkout beside the fixtures
        origin = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and (Path(origin).parent / "shared" / "fixtures").is_dir():
        return Path(origin).resolve().parent / "shared"
    return here


SHARED = _find_shared()
FIXTURES = SHARED / "fixtures"
IMAGES = FIXTURES / "images"
TRUTH = FIXTURES / "truth"
IN_CI = bool(os.environ.get("CI"))


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run without the fixtures: a run that silently left out most tests would look green."""
    if not (SHARED / "fixtures" / "truth" / "INDEX.json").is_file():
        raise pytest.UsageError(f"the image fixtures are missing: expected {SHARED / 'fixtures'} "
                                "(set IMGFS_SHARED=DIR to the folder holding fixtures/)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Under CI a skip is a failure: a test that cannot run for lack of FUSE, a registry or a package
    must not pass unnoticed."""
    outcome = yield
    rep = outcome.get_result()
    if IN_CI and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"skipped under CI, which must run every test: {reason}"
    return None


def fuzz_examples(n: int) -> int:
    """A property test's example budget: n in CI, times $IMGFS_FUZZ_SCALE for a longer run."""
    return n * max(1, int(os.environ.get("IMGFS_FUZZ_SCALE", "1")))


def fuzz_derandomize() -> bool:
    """Fixed examples in CI; a longer run ($IMGFS_FUZZ_SCALE > 1) explores new ones each time."""
    return os.environ.get("IMGFS_FUZZ_SCALE", "1") == "1"


def truth_index() -> dict:
    """INDEX.json of the fixtures: archive name -> format, images and their truth files."""
    path = TRUTH / "INDEX.json"
    if not path.exists():
        if IN_CI:
            raise RuntimeError(f"fixtures not found at {FIXTURES} (set IMGFS_SHARED)")
        return {}
    return json.loads(path.read_text())


def archives() -> list[str]:
    """Every fixture archive name (for parametrize)."""
    return sorted(truth_index())


def fuse_problem() -> str | None:
    """Why FUSE mounts cannot work here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount") is None:
        return "fusermount is missing (install the 'fuse' package)"
    try:
        import fuse  # noqa: F401  (fusepy loads libfuse.so.2 at import)
    except (ImportError, OSError) as e:
        return f"fusepy/libfuse2 unusable: {e}"
    return None


@pytest.fixture(scope="session")
def need_fuse() -> None:
    """Skip a FUSE test where FUSE is missing, except under CI, where that is a failure."""
    problem = fuse_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"FUSE is required in CI: {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="session")
def index() -> dict:
    """The fixtures' INDEX.json."""
    idx = truth_index()
    if not idx:
        pytest.skip(f"fixtures not found at {FIXTURES}")
    return idx
