"""A small HTTP/1.1 client for registries: kept-alive connections, timeouts, retries, careful redirects.

Built on the standard library's http.client: a registry needs GET and HEAD, Range, and a few headers;
connection reuse (one pool per scheme, host and port) is what makes many small range requests cheap.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ..errors import FormatError

MAX_REDIRECTS = 10
RETRIES = 3  # idempotent GETs are tried this many times again on 429, 5xx, resets and timeouts
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
CERT_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")
_CHUNK = 1 << 16
MIN_RATE = 64 << 10  # bytes per second below which a long answer counts as stalled


class HttpError(FormatError):
    """The registry could not be reached, or kept failing after the retries."""


def default_timeout() -> float:
    """The read timeout: $IMGFS_REGISTRY_TIMEOUT seconds, else 30."""
    try:
        return max(0.1, float(os.environ.get("IMGFS_REGISTRY_TIMEOUT", READ_TIMEOUT)))
    except ValueError:
        return READ_TIMEOUT


class Response:
    """A response whose body has been read whole (at most the caller's limit)."""

    def __init__(self, url: str, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.url, self.status, self.headers, self.body = url, status, headers, body

    def header(self, name: str) -> str | None:
        """One header's value, or None."""
        return self.headers.get(name)


def tls_context(host: str, verify: bool, cert_dir: str | None) -> ssl.SSLContext:
    """System CAs, plus a private CA and a client certificate laid out as containers' certs.d does it.

    `cert_dir` holds *.crt (CAs), NAME.cert with NAME.key (client); without it, /etc/containers/certs.d/HOST
    and /etc/docker/certs.d/HOST are looked in.
    """
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    dirs = [Path(cert_dir)] if cert_dir else [Path(d) / host for d in CERT_DIRS]
    for d in dirs:
        if not d.is_dir():
            continue
        try:
            for f in sorted(d.iterdir()):
                if f.suffix == ".crt":
                    ctx.load_verify_locations(cafile=str(f))
                elif f.suffix == ".cert" and f.with_suffix(".key").exists():
                    ctx.load_cert_chain(str(f), str(f.with_suffix(".key")))
        except (OSError, ssl.SSLError) as e:
            raise FormatError(f"certificates in {d}: {e}") from None
    return ctx


class Client:
    """GET and HEAD with a connection pool per origin, retries with backoff, and redirects that drop
    Authorization when they leave the host it was meant for."""

    def __init__(self, *, tls_verify: bool = True, cert_dir: str | None = None, timeout: float | None = None,
                 retries: int = RETRIES, log: Callable[[str], None] | None = None) -> None:
        self.tls_verify = tls_verify
        self.cert_dir = cert_dir
        self.timeout = timeout if timeout is not None else default_timeout()
        self.connect_timeout = min(CONNECT_TIMEOUT, self.timeout)
        self.retries = retries
        self.log = log
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self.requests = 0  # counted for the benchmark and the tests

    # -- connections ---------------------------------------------------------------------------
    def _connection(self, scheme: str, netloc: str, reuse: bool = True) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get((scheme, netloc))
            if idle and reuse:
                return idle.pop()
            if scheme == "https" and netloc not in self._contexts:
                self._contexts[netloc] = tls_context(netloc, self.tls_verify, self.cert_dir)
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                netloc, timeout=self.connect_timeout, context=self._contexts[netloc])
        else:
            conn = http.client.HTTPConnection(netloc, timeout=self.connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self.timeout)  # connect quickly or not at all; then every read has its own bound
        return conn

    def _release(self, scheme: str, netloc: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault((scheme, netloc), []).append(conn)

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
        for c in conns:
            c.close()

    # -- requests ------------------------------------------------------------------------------
    def get(self, url: str, headers: Mapping[str, str] | None = None, *, method: str = "GET",
            limit: int = 64 << 20, sink: Callable[[bytes], None] | None = None,
            auth_host: str | None = None) -> Response:
        """One request, its redirects followed, retried on transient failures; the body read whole.

        A body longer than `limit` is refused; with `sink`, a 2xx body goes there in chunks instead of being
        kept (it is started again from the first byte on a retry: sinks must accept that, see `restart`).
        `auth_host` is the host an Authorization header was meant for (default: the first URL's).
        """
        hdrs = dict(headers or {})
        auth_host = auth_host or urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._retrying(method, url, hdrs, limit, sink)
            location = resp.header("Location")
            if resp.status not in REDIRECTS or not location:
                return resp
            url = urljoin(url, location)
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise HttpError(f"redirect to a {parts.scheme!r} URL refused")
            if parts.netloc != auth_host:
                # Blob storage elsewhere gets a signed URL, never the registry's credentials.
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
        raise HttpError(f"more than {MAX_REDIRECTS} redirects, starting at {urlsplit(url).netloc}")

    def _retrying(self, method: str, url: str, headers: dict[str, str], limit: int,
                  sink: Callable[[bytes], None] | None) -> Response:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.25 * 2 ** (attempt - 1)))
            reset = getattr(sink, "reset", None)
            if reset is not None:
                reset()  # a retried download starts again from its first byte
            try:
                resp = self._once(method, parts.scheme, parts.netloc, target, headers, limit, sink)
            except ssl.SSLCertVerificationError as e:
                raise HttpError(f"{parts.netloc}: TLS certificate not trusted ({e.verify_message}); "
                                "give its CA with --cert-dir, or --tls-verify=false") from None
            except (OSError, http.client.HTTPException) as e:
                why = _reason(e)
                if isinstance(e, ssl.SSLError):
                    raise HttpError(f"{parts.netloc}: TLS failed: {why}") from None
                continue
            if resp.status in RETRY_STATUS and attempt < self.retries:
                why = f"HTTP {resp.status}"
                delay = _retry_after(resp.header("Retry-After"))
                if delay:
                    time.sleep(delay)
                continue
            return resp
        raise HttpError(f"{parts.netloc}: {method} {parts.path} failed after {self.retries + 1} tries: {why}")

    def _once(self, method: str, scheme: str, netloc: str, target: str, headers: dict[str, str], limit: int,
              sink: Callable[[bytes], None] | None) -> Response:
        conn = self._connection(scheme, netloc)
        ok = False
        try:
            self.requests += 1
            try:
                conn.request(method, target, headers={"User-Agent": "imgfs", **headers})
                r = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server had closed: once more on a new one, at no retry's cost.
                conn.close()
                conn = self._connection(scheme, netloc, reuse=False)
                conn.request(method, target, headers={"User-Agent": "imgfs", **headers})
                r = conn.getresponse()
            length = r.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit and not (
                    sink and 200 <= r.status < 300):
                raise _TooLarge(int(length))
            body = b"" if method == "HEAD" else b"".join(self._body(r, limit, sink if 200 <= r.status < 300 else None))
            ok = not r.will_close
            r.close()  # read to its end: the connection is free for the next request
            return Response(f"{scheme}://{netloc}{target}", r.status, r.headers, body)
        finally:
            if ok:
                self._release(scheme, netloc, conn)
            else:
                conn.close()

    def _body(self, r: http.client.HTTPResponse, limit: int, sink: Callable[[bytes], None] | None) -> Iterator[bytes]:
        got = 0
        start = time.monotonic()
        while True:
            chunk = r.read1(_CHUNK) if hasattr(r, "read1") else r.read(_CHUNK)
            if not chunk:
                return
            got += len(chunk)
            # Each read has the socket's timeout; a body that trickles in byte by byte has this one too.
            if time.monotonic() - start > self.timeout * 4 + got / MIN_RATE:
                raise TimeoutError("the answer trickles in too slowly")
            if sink is not None:
                sink(chunk)
                continue
            if got > limit:
                raise _TooLarge(got)
            yield chunk


class _TooLarge(FormatError):
    def __init__(self, size: int) -> None:
        super().__init__(f"the answer is larger than expected ({size} bytes or more)")


def _reason(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, http.client.IncompleteRead):
        return "connection closed in mid-answer"
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(text)


def _retry_after(value: str | None) -> float:
    with contextlib.suppress(ValueError, TypeError):
        return min(10.0, max(0.0, float(value)))  # type: ignore[arg-type]
    return 0.0
