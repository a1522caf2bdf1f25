"""Tar offset index: byte sources and header scanning, the lowest layer of imgfs."""

from .reader import MemberIndex, normalize, scan
from .source import FileSource, SliceSource, Source, open_maybe_compressed

__all__ = ["FileSource", "MemberIndex", "SliceSource", "Source", "normalize", "open_maybe_compressed", "scan"]
