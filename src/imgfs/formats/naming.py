"""Layer directory names: the history command that made each layer, made readable."""

from __future__ import annotations

import re
from typing import Any

MAX_NAME = 255
SLASH = "\u2215"  # DIVISION SLASH: looks like '/', but is allowed in a file name

_NOP = re.compile(r"^/bin/sh -c #\(nop\)\s+")
_SHELL = re.compile(r"^/bin/(?:ba)?sh -c ")
_ARGS = re.compile(r"^\|(\d+)((?: \S+=\S*)*) ")  # '|2 A=1 B=2 ' build-arg prefix of RUN steps
_ARGS_SHELL = re.compile(r"^\|\d+ .*? (?=/bin/(?:ba)?sh -c )")  # the same, values with spaces (unquoted)
_HASH = re.compile(r"\b(file|dir|multi):([0-9a-f]{8})[0-9a-f]{56}\b")
_SPACE = re.compile(r"\s+")


def readable(created_by: str) -> str:
    """Turn a history `created_by` into the Dockerfile-like step it stands for."""
    s = created_by.strip()
    if s.endswith("# buildkit"):
        s = s[: -len("# buildkit")].rstrip()
    run = False
    if s.startswith("RUN "):
        s, run = s[4:], True
    m = _ARGS_SHELL.match(s) or _ARGS.match(s)
    if m:
        s, run = s[m.end():], True
    if _NOP.match(s):
        s = _NOP.sub("", s)
    elif _SHELL.match(s):
        s, run = _SHELL.sub("", s), True
    if run:
        s = "RUN " + s
    return _HASH.sub(lambda mm: f"{mm.group(1)}:{mm.group(2)}", s)


def _fit(text: str, budget: int) -> str:
    data = text.encode("utf-8", "surrogateescape")
    if len(data) <= budget:
        return text
    return data[:budget].decode("utf-8", "ignore").rstrip()


def safe_name(prefix: str, text: str) -> str:
    """'<prefix> <text>' as a valid file name: no '/', no NUL, at most 255 bytes."""
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates from JSON cannot be names
    text = text.replace("/", SLASH).replace("\0", "")
    text = _SPACE.sub(" ", text).strip()
    if text in ("", ".", ".."):
        return prefix
    return prefix + " " + _fit(text, MAX_NAME - len(prefix) - 1)


def history_for_layers(config: dict[str, Any], n_layers: int) -> tuple[list[dict[str, Any] | None], list[str]]:
    """The history entry of each layer (None where there is none), and warnings."""
    history = config.get("history")
    if not isinstance(history, list):
        history = []
    entries = [h for h in history if isinstance(h, dict) and h.get("empty_layer") is not True]
    warnings = []
    if history and len(entries) != n_layers:
        warnings.append(
            f"history has {len(entries)} non-empty {'entry' if len(entries) == 1 else 'entries'} for {n_layers} "
            f"layer{'' if n_layers == 1 else 's'}: "
            + ("layers past the history are named by digest" if len(entries) < n_layers
               else "the extra history entries are ignored"))
    elif not history and n_layers:
        warnings.append("the config has no history: layers are named by digest")
    out: list[dict[str, Any] | None] = [entries[i] if i < len(entries) else None for i in range(n_layers)]
    return out, warnings


def layer_names(config: dict[str, Any], digests: list[str | None]) -> tuple[list[str], list[str | None], list[str]]:
    """Directory names and created_by commands for each layer, plus warnings."""
    hist, warnings = history_for_layers(config, len(digests))
    width = len(str(len(digests)))
    names, commands = [], []
    for i, (h, digest) in enumerate(zip(hist, digests, strict=False)):
        prefix = str(i + 1).zfill(width)
        created_by = h.get("created_by") if h else None
        text = ""
        if isinstance(created_by, str) and created_by.strip():
            text = readable(created_by)
        elif h and isinstance(h.get("comment"), str):
            text = h["comment"]
        if not text:
            text = _short_digest(digest)
        names.append(safe_name(prefix, text))
        commands.append(created_by if isinstance(created_by, str) else None)
    return names, commands, warnings


def _short_digest(digest: str | None) -> str:
    if not digest:
        return "layer"
    alg, _, hexpart = digest.partition(":")
    return f"{alg}:{hexpart[:12]}" if hexpart else digest[:19]
