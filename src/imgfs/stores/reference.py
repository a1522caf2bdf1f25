"""Image references as docker and skopeo read them: `[HOST[:PORT]/]REPO[:TAG|@sha256:HEX]`."""

from __future__ import annotations

import re

from ..errors import UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"  # where docker.io's API answers
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HEX = re.compile(r"[0-9a-f]{64}")
LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


class Reference:
    """One image in one registry: host (as written, with port), repository, and a tag or a digest."""

    __slots__ = ("host", "repo", "tag", "digest")

    def __init__(self, host: str, repo: str, tag: str | None, digest: str | None) -> None:
        self.host, self.repo, self.tag, self.digest = host, repo, tag, digest

    @property
    def api_host(self) -> str:
        """The host:port the registry API answers on."""
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def hostname(self) -> str:
        """The host without its port."""
        h = self.host
        if h.startswith("["):
            return h[:h.index("]") + 1]
        return h.rsplit(":", 1)[0] if ":" in h else h

    @property
    def loopback(self) -> bool:
        """Whether the registry is on this machine (plain HTTP is allowed there, as skopeo allows it)."""
        return self.hostname in LOOPBACK

    @property
    def selector(self) -> str:
        """What the manifest endpoint takes: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return f"{self.host}/{self.repo}" + (f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}")


def parse(text: str) -> Reference:
    """Parse the part after `docker://`; UsageError (one line) for anything docker would refuse."""
    name = text.removeprefix("//")
    if not name or name != name.strip():
        raise UsageError(f"docker://{text}: not an image reference")
    digest = None
    if "@" in name:
        name, _, digest = name.partition("@")
        alg, _, hexpart = digest.partition(":")
        if alg != "sha256" or not _HEX.fullmatch(hexpart):
            raise UsageError(f"docker://{text}: the digest must be sha256:<64 hex digits>")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise UsageError(f"docker://{text}: {tag!r} is not a valid tag")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, name
    if host == DOCKER_HUB and "/" not in path:
        path = "library/" + path  # docker://app means docker.io/library/app
    if not path or not all(_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise UsageError(f"docker://{text}: {path!r} is not a valid repository name (lower case, digits, ._-)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(host, path, tag, digest)
