"""The first pass through a gzip stream, run in a child process: size and seek points, written to a file.

rapidgzip aborts the whole process (std::terminate) on some damaged streams; a mount must not die of a
bad layer, so the one pass that meets unknown data runs here, and a crash only fails that layer.
Started by compressed.py as `python -I -c ... PATHS FD OFFSET LENGTH OUT` (never `-m`: that would put the
working directory first on sys.path) -> 'P done total' lines, then 'S size'.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    """Decompress the window of the inherited descriptor once, write the seek points to OUT, print the size."""
    import rapidgzip

    from .source import FileSource, SliceSource, SourceFile

    def report(done: int, total: int) -> None:  # progress for the parent, which relays it
        print(f"P {done} {total}", flush=True)

    fd, base, length, out = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    window = SourceFile(SliceSource(FileSource(f"descriptor {fd}", fd=fd), base, length), report)
    f = rapidgzip.RapidgzipFile(window, parallelization=os.cpu_count() or 1)
    try:
        f.seek(0, 2)
        size = f.tell()
        with open(out, "wb") as fh:
            f.export_index(fh)
    finally:
        f.close()
    print(f"S {size}", flush=True)
    return 0


def run() -> None:
    """The child's entry: sys.argv is ['-c', PATHS, FD, OFFSET, LENGTH, OUT]; exit 1 on any failure."""
    try:
        sys.exit(main(sys.argv[2:]))
    except Exception as e:  # noqa: BLE001 - the parent only needs to know that the pass failed
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
