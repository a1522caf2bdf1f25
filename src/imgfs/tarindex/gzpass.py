"""The first pass through a gzip stream, run in a child process: size and seek points, written to a file.

rapidgzip aborts the whole process (std::terminate) on some damaged streams; a mount must not die of a
bad layer, so the one pass that meets unknown data runs here, and a crash only fails that layer.
Usage: python -m imgfs.tarindex.gzpass PATH OFFSET LENGTH OUT  ->  'P done total' lines, then 'S size'
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    """Decompress the window once, write the seek points to OUT and print the uncompressed size."""
    import rapidgzip

    from .source import FileSource, SliceSource, SourceFile

    def report(done: int, total: int) -> None:  # progress for the parent, which relays it
        print(f"P {done} {total}", flush=True)

    path, base, length, out = argv[0], int(argv[1]), int(argv[2]), argv[3]
    window = SourceFile(SliceSource(FileSource(path), base, length), report)
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


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as e:  # noqa: BLE001 - the parent only needs to know that the pass failed
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
