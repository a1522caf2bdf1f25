#!/usr/bin/env bash
# Set up imgfs for development on Debian/Ubuntu: the system packages, then .venv with imgfs and its test tools.
# Idempotent: a second run only checks. Usage: scripts/setup.sh   (then: . .venv/bin/activate)
#
# System packages, and why:
#   fuse3, libfuse3-3, libfuse2   'imgfs mount' (libfuse 3 preferred, 2 the fallback); fuse3 ships fusermount3 and
#                                 fusermount as a link to it, which libfuse 2 uses too (Debian's fuse and fuse3 conflict)
#   docker-registry, skopeo       the tests' loopback registry (Distribution) and what fills it
#   apache2-utils, openssl        the tests' htpasswd (bcrypt) and TLS certificates for the registry
#   tar, zsh, tmux                the tests' sparse archives (GNU tar), completion in real shells
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in fuse3 libfuse3-3 libfuse2 docker-registry skopeo apache2-utils openssl tar zsh tmux; do
    have_pkg "$p" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: not a Debian/Ubuntu system; install by hand: ${need_apt[*]}" >&2
    else
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "setup: installing ${need_apt[*]}" >&2
        $sudo apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
    fi
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
