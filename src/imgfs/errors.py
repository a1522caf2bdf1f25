"""The one exception family imgfs raises; the CLI turns each into a single line."""

from __future__ import annotations


class ImgfsError(Exception):
    """Base of every error imgfs raises on purpose (bad input, bad selection)."""

    exit_code = 1


class FormatError(ImgfsError):
    """The archive, a layer or a JSON document is not what it claims to be."""


class TruncatedError(FormatError):
    """The data ends before a header or a member says it should."""


class UsageError(ImgfsError):
    """A command line that cannot work as given (a bad option value)."""

    exit_code = 2


class SelectionError(ImgfsError):
    """An --image, --platform or --layer choice matches nothing or too much."""


class NotFoundError(ImgfsError):
    """A path does not exist in the chosen tree."""
