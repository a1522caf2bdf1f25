"""Registry credentials and challenges, as docker and skopeo find and answer them.

Credentials come from --creds, else the first auth file that knows the registry ($REGISTRY_AUTH_FILE,
$XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json, ~/.docker/config.json: credHelpers,
credsStore, auths). They live in memory only and are never part of a message.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from ..errors import FormatError, UsageError
from .http import Client, HttpError
from .reference import DOCKER_HUB, LOOPBACK

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
MAX_TOKEN = 1 << 20


class Credentials:
    """A user name and a secret; the repr never shows the secret."""

    __slots__ = ("user", "secret")

    def __init__(self, user: str, secret: str) -> None:
        self.user, self.secret = user, secret

    def basic(self) -> str:
        """The Basic Authorization header value."""
        return "Basic " + base64.b64encode(f"{self.user}:{self.secret}".encode()).decode()

    def __repr__(self) -> str:
        return f"Credentials({self.user!r}, ***)"


def parse_creds(text: str) -> Credentials:
    """--creds USER[:PASS]; without PASS it is asked for on the terminal."""
    user, sep, secret = text.partition(":")
    if not user:
        raise UsageError("--creds: expected USER[:PASSWORD]")
    if not sep:
        import getpass
        import sys

        if not sys.stdin.isatty():
            raise UsageError("--creds USER without a password needs a terminal to ask for it")
        secret = getpass.getpass(f"password for {user}: ")
    return Credentials(user, secret)


def auth_files() -> list[Path]:
    """The auth files looked in, first match wins."""
    out = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        out.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    home = Path(os.path.expanduser("~"))
    out += [home / ".config" / "containers" / "auth.json", home / ".docker" / "config.json"]
    return out


def _keys(host: str, repo: str) -> list[str]:
    """The names an auth file may file a registry under, most specific first."""
    keys = []
    parts = repo.split("/")
    for n in range(len(parts), 0, -1):
        keys.append(f"{host}/{'/'.join(parts[:n])}")
    keys += [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
    if host == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    return keys


def _helper(name: str, host: str) -> Credentials | None:
    server = "https://index.docker.io/v1/" if host == DOCKER_HUB else host
    try:
        res = subprocess.run([f"docker-credential-{name}", "get"], input=server, capture_output=True, text=True,
                             timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise FormatError(f"credential helper docker-credential-{name}: {getattr(e, 'strerror', None) or e}") \
            from None
    if res.returncode != 0:
        return None  # the helper knows nothing of this registry: anonymous, as docker goes on
    try:
        doc = json.loads(res.stdout)
        return Credentials(str(doc["Username"]), str(doc["Secret"]))
    except (ValueError, KeyError, TypeError):
        raise FormatError(f"credential helper docker-credential-{name} answered something unreadable") from None


def find_credentials(host: str, repo: str) -> Credentials | None:
    """The credentials the auth files hold for this registry (and repository), or None."""
    keys = _keys(host, repo)
    for path in auth_files():
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            raise FormatError(f"{path}: unreadable auth file ({getattr(e, 'strerror', None) or 'not JSON'})") \
                from None
        if not isinstance(doc, dict):
            continue
        helpers = doc.get("credHelpers") if isinstance(doc.get("credHelpers"), dict) else {}
        for k in keys:
            if isinstance(helpers.get(k), str):
                return _helper(helpers[k], host)
        auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else {}
        for k in keys:
            entry = auths.get(k)
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
                try:
                    user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
                except ValueError:
                    raise FormatError(f"{path}: the entry for {k} is not base64 USER:PASSWORD") from None
                return Credentials(user, secret)
        if isinstance(doc.get("credsStore"), str):
            found = _helper(doc["credsStore"], host)
            if found is not None:
                return found
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """('bearer'|'basic'|..., parameters) of a WWW-Authenticate value."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


class Authenticator:
    """Answers a registry's 401s: Basic with the credentials, or Bearer tokens kept per scope until they expire."""

    def __init__(self, client: Client, host: str, repo: str, creds: Credentials | None, tls_verify: bool) -> None:
        self.client, self.host, self.repo = client, host, repo
        self._creds = creds
        self._looked = creds is not None
        self.tls_verify = tls_verify
        self._scheme: str | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._challenge: dict[str, str] = {}
        self._lock = threading.Lock()

    def creds(self) -> Credentials | None:
        """The credentials (looked up once, on the first challenge)."""
        if not self._looked:
            self._creds = find_credentials(self.host, self.repo)
            self._looked = True
        return self._creds

    def header(self, scope: str) -> dict[str, str]:
        """The Authorization header to send now (empty before any challenge)."""
        with self._lock:
            if self._scheme == "basic" and self._creds is not None:
                return {"Authorization": self._creds.basic()}
            token = self._tokens.get(scope)
            if token and token[1] > time.monotonic():
                return {"Authorization": "Bearer " + token[0]}
        return {}

    def answer(self, challenges: list[str], scope: str) -> dict[str, str]:
        """Meet a 401: fetch a token (or use Basic) and return the header to try again with."""
        parsed = [parse_challenge(c) for c in challenges]
        bearer = next((p for s, p in parsed if s == "bearer"), None)
        if bearer is not None and bearer.get("realm"):
            with self._lock:
                self._scheme = "bearer"
                self._tokens.pop(scope, None)
            return {"Authorization": "Bearer " + self._fetch_token(bearer, scope)}
        if any(s == "basic" for s, _ in parsed):
            creds = self.creds()
            if creds is None:
                raise HttpError(f"{self.host}: the registry wants a user name and password (--creds USER:PASS)")
            with self._lock:
                self._scheme = "basic"
            return {"Authorization": creds.basic()}
        raise HttpError(f"{self.host}: unsupported authentication challenge")

    def _fetch_token(self, params: dict[str, str], scope: str) -> str:
        realm = params["realm"]
        parts = urlsplit(realm)
        if parts.scheme not in ("https", "http"):
            raise HttpError(f"{self.host}: token realm is not an http(s) URL")
        query = {"service": params["service"]} if params.get("service") else {}
        query["scope"] = params.get("scope") or scope
        headers = {}
        creds = self.creds()
        if creds is not None:
            if parts.scheme == "http" and parts.hostname not in LOOPBACK and self.tls_verify:
                raise HttpError(f"{self.host}: refusing to send credentials to a plain-HTTP token realm")
            headers["Authorization"] = creds.basic()
        sep = "&" if parts.query else "?"
        resp = self.client.get(realm + sep + urlencode(query), headers, limit=MAX_TOKEN)
        if resp.status == 401:
            raise HttpError(f"{self.host}: the token service refused the credentials (HTTP 401)")
        if resp.status != 200:
            raise HttpError(f"{self.host}: the token service answered HTTP {resp.status}")
        try:
            doc = json.loads(resp.body)
            token = doc.get("token") or doc.get("access_token")
            expires = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise HttpError(f"{self.host}: the token service answered something that is not a token") from None
        if not isinstance(token, str) or not token:
            raise HttpError(f"{self.host}: the token service answered no token")
        with self._lock:
            self._tokens[scope] = (token, time.monotonic() + max(1.0, expires - 10))
        return token


def hide_from_process_title(secret: str) -> None:
    """Overwrite `secret` where it sits in this process's command line (what ps and /proc/PID/cmdline show).

    --creds USER:PASS arrives on the command line; a mount's daemon lives on with that command line, so
    the password is blanked in place, in the memory the kernel shows as the command line (Linux).
    """
    if not secret:
        return
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48 and 49 of stat)
        needle = secret.encode()
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            args = mem.read(end - start)
            if needle in args:
                mem.seek(start)
                mem.write(args.replace(needle, b"*" * len(needle)))
    except (OSError, ValueError, IndexError):  # not Linux, or /proc/self/mem refused: nothing to blank
        pass
