#!/usr/bin/env bash
# Set up imgfs for development on Debian/Ubuntu: libfuse 2 (system), then .venv with imgfs and its test tools.
# Idempotent: a second run only checks. Usage: scripts/setup.sh   (then: . .venv/bin/activate)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount >/dev/null 2>&1 || need_apt+=(fuse)
ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2' || need_apt+=(libfuse2)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${need_apt[*]} (FUSE 2, needed only for 'imgfs mount')" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import imgfs, fuse, pytest, hypothesis' >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.imgfs-installed ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e '.[test]'
    touch .venv/.imgfs-installed
fi
echo "setup: ready (.venv/bin/imgfs)" >&2
