"""Tar offset index: byte sources and header scanning, the lowest layer of imgfs."""

from .reader import MemberIndex, meta_digest, normalize, scan
from .source import FileSource, SliceSource, Source

__all__ = ["FileSource", "MemberIndex", "SliceSource", "Source", "meta_digest", "normalize", "scan"]
