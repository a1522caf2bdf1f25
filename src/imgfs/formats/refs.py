"""Image references normalised as Docker does: `app` is `docker.io/library/app:latest`."""

from __future__ import annotations

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = ("index.docker.io", "registry-1.docker.io")


def normalize_ref(ref: str) -> str:
    """The full form of a reference: domain, path (library/ for Docker Hub's own images), tag or digest.

    A first component holding '.' or ':', or `localhost`, is a registry; anything else lives on
    Docker Hub. A reference with neither tag nor digest means `:latest`.
    """
    name, at, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    last = path.rpartition("/")[2]
    repo, colon, tag = path.rpartition(":") if ":" in last else (path, "", "")
    if domain == DEFAULT_DOMAIN and "/" not in repo:
        repo = "library/" + repo
    out = f"{domain}/{repo}"
    if colon:
        out += ":" + tag
    elif not at:
        out += ":latest"
    return out + (at + digest if at else "")


def same_ref(have: str, want: str) -> bool:
    """Whether two references name the same image once both are normalised (`a` = `docker.io/library/a:latest`)."""
    return normalize_ref(have) == normalize_ref(want)
