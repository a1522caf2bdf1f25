"""The first pass through a gzip stream, run in a child process: size and seek points, written to a file.

rapidgzip aborts the whole process (std::terminate) on some damaged streams; a mount must not die of a
bad layer, so the one pass that meets unknown data runs here, and a crash only fails that layer.
Usage: python -m imgfs.tarindex.gzpass PATH OFFSET LENGTH OUT  ->  'P done total' lines, then 'S size'
"""

from __future__ import annotations

import io
import os
import sys


class _Window(io.RawIOBase):
    """Bytes [base, base+length) of a file, as a seekable file object."""

    def __init__(self, fd: int, base: int, length: int) -> None:
        self.fd, self.base, self.length, self.pos = fd, base, length, 0
        self.next_report = 64 << 20

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, {0: 0, 1: self.pos, 2: self.length}[whence] + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self.length - self.pos)
        if n <= 0:
            return 0
        data = os.pread(self.fd, n, self.base + self.pos)
        b[:len(data)] = data
        self.pos += len(data)
        if self.pos >= self.next_report:  # progress for the parent, which relays it
            self.next_report = self.pos + (64 << 20)
            print(f"P {self.pos} {self.length}", flush=True)
        return len(data)


def main(argv: list[str]) -> int:
    """Decompress the window once, write the seek points to OUT and print the uncompressed size."""
    import rapidgzip

    path, base, length, out = argv[0], int(argv[1]), int(argv[2]), argv[3]
    fd = os.open(path, os.O_RDONLY)
    f = rapidgzip.RapidgzipFile(_Window(fd, base, length), parallelization=os.cpu_count() or 1)
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
