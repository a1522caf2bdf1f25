"""Terminal output of the CLI: messages, progress, tables, JSON and the formatting of values."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO

# Control characters would break tab/line separated output: show them as escapes instead.
_ESCAPES = {i: f"\\x{i:02x}" for i in range(32)} | {9: "\\t", 10: "\\n", 13: "\\r", 127: "\\x7f"}


def field(text: str) -> str:
    """A value made safe for one tab-separated field (control characters escaped)."""
    return text.translate(_ESCAPES)


def show_path(key: bytes) -> str:
    """A tree key as '/path', undecodable bytes and control characters escaped."""
    return field("/" + key.decode("utf-8", "backslashreplace"))


def json_name(key: str, raw: bytes | str) -> dict[str, str]:
    """A name for JSON, losslessly: {key: its text} when it is UTF-8; else the text with U+FFFD for the
    bytes that are not, and {key + "_b64": the exact bytes in base64}."""
    if isinstance(raw, str):  # from the command line: undecodable bytes arrive as surrogates
        raw = os.fsencode(raw)
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {key: raw.decode("utf-8", "replace"), key + "_b64": base64.b64encode(raw).decode("ascii")}


def json_path(key: bytes) -> dict[str, str]:
    """A tree key as JSON "path" ('/' + key), losslessly (see json_name)."""
    return json_name("path", b"/" + key)


def human(n: float) -> str:
    """A byte count the way `ls -h` prints it (1.5K, 20M)."""
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            if unit == "B":
                return f"{int(n)}"
            return f"{n:.1f}{unit}" if abs(n) < 10 else f"{n:.0f}{unit}"
        n /= 1024
    return str(n)  # unreachable


def plural(count: int, word: str, many: str = "") -> str:
    """'1 file', '2 files' ('1 entry', '2 entries' with many='entries')."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, with an ellipsis when cut."""
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def fit_width(rows: list[list[str]], width: int, fit: list[tuple[int, int]]) -> list[list[str]]:
    """Table rows (header first) with columns cut (an ellipsis ends a cut cell) or left out, in the order
    `fit` gives, (column, narrowest; 0 lets it go), until a line is at most `width` characters."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    keep = list(range(len(widths)))
    for col, narrowest in fit:
        over = sum(widths[i] for i in keep) + 2 * (len(keep) - 1) - width
        if over <= 0:
            break
        if col not in keep:
            continue
        w = widths[col] - over
        if w < max(narrowest, 8):  # a few characters of a column say nothing
            if narrowest == 0:
                keep.remove(col)
                continue
            w = narrowest
        widths[col] = min(widths[col], w)
    return [[clip(r[i], widths[i]) for i in keep] for r in rows]


def short_digest(digest: str | None) -> str:
    """The first 12 hex digits of a digest, or '-'."""
    return digest.split(":", 1)[-1][:12] if digest else "-"


def timestamp(mtime: float) -> str:
    """A file time as ISO 8601 UTC, to the second."""
    try:
        return datetime.fromtimestamp(int(mtime), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(int(mtime))


def created(text: str | None) -> str:
    """A config `created` string shortened to the second ('-' when absent)."""
    if not text:
        return "-"
    head, dot, _ = text.partition(".")
    return head + "Z" if dot and text.endswith("Z") else text


def mode_string(st_mode: int) -> str:
    """'drwxr-xr-x' style mode string, as ls -l shows it."""
    return stat.filemode(st_mode)


class Progress:
    """Draws 'what: done of total, rate' on a terminal once a step has run for about a second."""

    DELAY = 1.0
    EVERY = 0.2

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.what = ""
        self.started = 0.0
        self.drawn = 0.0
        self.visible = False

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if what != self.what:
            self.clear()  # the finished step's line must not linger while a quick one runs
            self.what, self.started, self.drawn = what, now, 0.0
        elapsed = now - self.started
        if elapsed < self.DELAY or (now - self.drawn < self.EVERY and done < total):
            return
        self.drawn = now
        name = what if len(what) <= 40 else what[:18] + "..." + what[-19:]
        pct = f" ({100 * done // total}%)" if total else ""
        line = f"{name}: {human(done)} of {human(total)}{pct}, {human(done / elapsed)}/s"
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self.visible = True
        if done >= total:
            self.clear()

    def clear(self) -> None:
        """Erase the progress line, if one is shown."""
        if self.visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.visible = False


class Ui:
    """Where the CLI writes: data to stdout, messages and progress to stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.out = sys.stdout
        self.err = sys.stderr
        self.quiet = quiet
        self.tty = _isatty(self.out)
        self.progress = Progress(self.err) if not quiet and _isatty(self.err) else None

    def _quiet_progress(self) -> None:
        if self.progress:
            self.progress.clear()

    def _message(self, text: str) -> None:
        self._quiet_progress()
        self.err.write(f"imgfs: {text}\n")
        self.err.flush()

    def warn(self, message: str) -> None:
        """An engine warning (silenced by --quiet)."""
        if not self.quiet:
            self._message(f"warning: {message}")

    def info(self, message: str) -> None:
        """A note about what was done (silenced by --quiet)."""
        if not self.quiet:
            self._message(message)

    def error(self, message: str) -> None:
        """An error line; never silenced."""
        self._message(message.splitlines()[0] if message else "error")

    def table(self, header: list[str], rows: list[list[str]], human_rows: list[list[str]] | None = None,
              fit: list[tuple[int, int]] | None = None) -> None:
        """Rows as tab-separated lines; on a terminal aligned, with a header and `human_rows` if given, and
        cut to the terminal's width by `fit`: (column, narrowest) in the order they give way (0: may go)."""
        self._quiet_progress()
        if not self.tty:
            for row in rows:
                self.out.write("\t".join(field(c) for c in row) + "\n")
            return
        shown = [header] + [[field(c) for c in r] for r in (human_rows or rows)]
        if fit:
            shown = fit_width(shown, shutil.get_terminal_size().columns, fit)
        widths = [max(len(r[i]) for r in shown) for i in range(len(shown[0]) - 1)]
        for r in shown:
            self.out.write("  ".join([c.ljust(w) for c, w in zip(r, widths, strict=False)] + r[-1:]).rstrip() + "\n")

    def line(self, text: str) -> None:
        """One line of plain output."""
        self._quiet_progress()
        self.out.write(text + "\n")

    def json(self, doc: Any) -> None:
        """One JSON document."""
        self._quiet_progress()
        self.out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")

    def json_line(self, obj: Any) -> None:
        """One JSON object on one line (JSON Lines)."""
        self._quiet_progress()
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
