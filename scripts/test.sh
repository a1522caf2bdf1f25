#!/usr/bin/env bash
# Set everything up, then run the whole test suite (lint + pytest). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests scripts
.venv/bin/python -m pytest -q "$@"
