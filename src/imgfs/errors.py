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
    """An image, platform or layer choice matches nothing or too much.

    Made from a template whose `{image}`, `{platform}` or `{layer}` names the choice at fault: the message
    says it in the library's words; `worded(names)` says it with other names (the CLI's: `--layer`).
    """

    WORDS = {"image": "image ref", "platform": "platform", "layer": "layer"}

    def __init__(self, template: str, **values: object) -> None:
        self.template, self.values = template, values
        super().__init__(self.worded(self.WORDS))

    def worded(self, names: dict[str, str]) -> str:
        """The message, each choice named as `names` says (the template alone, if no values were given)."""
        return self.template.format_map(names | self.values) if self.values else self.template


class NotFoundError(ImgfsError):
    """A path does not exist in the chosen tree."""
