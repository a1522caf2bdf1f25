#!/usr/bin/env bash
# Set everything up, then run the whole test suite (lint + pytest). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
shared=${IMGFS_SHARED:-$(cd .. && pwd)/shared}
# A clone made elsewhere (a temporary folder) finds the fixtures beside the checkout it was cloned from.
origin=$(git config --get remote.origin.url 2>/dev/null || true)
if [ -z "${IMGFS_SHARED:-}" ] && [ ! -d "$shared/fixtures" ] && [ -d "$origin" ] && [ -d "$origin/../shared/fixtures" ]; then
    shared=$(cd "$origin/.." && pwd)/shared
fi
if [ ! -f "$shared/fixtures/truth/INDEX.json" ]; then
    echo "test: the image fixtures are missing: expected $shared/fixtures (set IMGFS_SHARED=DIR to the folder holding fixtures/)" >&2
    exit 1
fi
export IMGFS_SHARED="$shared"
.venv/bin/ruff check src tests scripts
.venv/bin/python -m pytest -q "$@"
