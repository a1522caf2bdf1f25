"""Shared test setup: where the real fixture images and their truth live, and FUSE availability."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("IMGFS_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
IMAGES = FIXTURES / "images"
TRUTH = FIXTURES / "truth"
IN_CI = bool(os.environ.get("CI"))


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
