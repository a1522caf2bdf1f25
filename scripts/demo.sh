#!/usr/bin/env bash
# Set everything up, then show imgfs on the demo image: its layers, where trace.log is, and trace.log itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
IMG=examples/seed.tar
run() { printf '\n$ %s\n' "$*"; "$@"; }
export PATH="$PWD/.venv/bin:$PATH"
run imgfs layers "$IMG"
run imgfs find "$IMG" --name trace.log
run imgfs cat "$IMG" /app/trace.log --layer trace.log
if [ -e /dev/fuse ] && { command -v fusermount3 || command -v fusermount; } >/dev/null; then
    mnt=$(mktemp -d)
    trap 'imgfs umount "$mnt" 2>/dev/null || true; rmdir "$mnt"' EXIT
    run imgfs mount "$IMG" "$mnt"
    run ls "$mnt" "$mnt/layers"
    run find "$mnt/layers" -name trace.log
    run cat "$mnt/merged/app/trace.log"
    run imgfs umount "$mnt"
else
    echo "(no /dev/fuse here: skipping the mount part of the demo)"
fi
