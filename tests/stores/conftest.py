"""Real registries for the store tests: Distribution (docker-registry) on 127.0.0.1, filled by skopeo, and
proxies in front of it that count, redirect or misbehave. Every server is stopped at the end, even on failure."""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import IMAGES, IN_CI, truth_index

REGISTRY_BIN = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")


def free_port() -> int:
    """A port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_tools() -> None:
    """Skip (outside CI) when the registry or skopeo is missing; under CI that skip fails the run."""
    missing = [n for n, p in (("docker-registry", REGISTRY_BIN), ("skopeo", SKOPEO)) if p is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/setup.sh installs them)")


class Registry:
    """One docker-registry process on 127.0.0.1 with its storage in a temporary folder."""

    def __init__(self, root: Path, storage: Path | None = None, *, tls: tuple[Path, Path] | None = None,
                 htpasswd: Path | None = None, token: dict[str, str] | None = None) -> None:
        self.root = root
        self.storage = storage or root / "storage"
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true", "storage:",
                 "  filesystem:", f"    rootdirectory: {self.storage}", "  delete:", "    enabled: true",
                 "http:", f"  addr: {self.host}"]
        if tls:
            lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
        if htpasswd:
            lines += ["auth:", "  htpasswd:", "    realm: imgfs-test", f"    path: {htpasswd}"]
        if token:
            lines += ["auth:", "  token:"] + [f"    {k}: {v}" for k, v in token.items()]
        cfg = root / f"registry-{self.port}.yml"
        cfg.write_text("\n".join(lines) + "\n")
        self.log = open(root / f"registry-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([REGISTRY_BIN or "docker-registry", "serve", str(cfg)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        atexit.register(self.stop)
        self._wait(tls is not None)
        self.pushed: dict[tuple[str, str | None, bool], str] = {}
        self._lock = threading.Lock()

    def _wait(self, tls: bool) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.root / f'registry-{self.port}.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not come up within 20 s")

    def push(self, archive: str, *, compress: str | None = None, all_images: bool = False,
             repo: str | None = None) -> str:
        """Push a fixture archive with skopeo (once per session); its docker:// reference."""
        key = (archive, compress, all_images)
        with self._lock:
            if key in self.pushed:
                return self.pushed[key]
            entry = truth_index()[archive]
            oci = entry["format"].startswith(("skopeo", "podman-oci", "oci"))
            name = repo or archive.replace(".", "-").lower()
            if compress:
                name += f"-{compress}"
            dest = f"{self.host}/{name}:t1"
            home = self.root / f"home-{len(self.pushed)}"  # skopeo's blob-info cache, private to this push
            home.mkdir(exist_ok=True)
            cmd = [SKOPEO or "skopeo", "copy", "-q", "--insecure-policy", "--dest-tls-verify=false"]
            if compress:
                cmd += ["--dest-compress-format", compress, "--dest-compress"]
            if all_images:
                cmd.append("--all")
            cmd += [("oci-archive:" if oci else "docker-archive:") + str(IMAGES / archive), f"docker://{dest}"]
            res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HOME": str(home)},
                                 timeout=300)
            if res.returncode != 0:
                raise RuntimeError(f"skopeo push of {archive} failed: {res.stderr.strip()}")
            self.pushed[key] = f"docker://{dest}"
            return self.pushed[key]

    def stop(self) -> None:
        """Stop the process (idempotent)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- a proxy in front of a registry: it counts, and it can be told to misbehave -----------------------------
Hook = Callable[["ProxyHandler"], bool]  # True: the hook answered the request itself


class ProxyHandler(BaseHTTPRequestHandler):
    """Forwards to the upstream registry, counting blob body bytes; hooks may answer instead."""

    protocol_version = "HTTP/1.1"
    server: Proxy

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.requests.append((self.command, self.path, dict(self.headers.items())))
        for hook in list(srv.hooks):
            if hook(self):
                return
        status, headers, body = self.forward()
        self.reply(status, headers, body)

    def forward(self, headers: dict[str, str] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
        """The upstream's answer to this request (headers forwarded as they are, repeated ones too)."""
        conn = http.client.HTTPConnection(self.server.upstream, timeout=30)
        try:
            send = headers if headers is not None else {}
            if headers is None:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    conn.putheader(k, v)
                conn.endheaders()
            else:
                conn.request(self.command, self.path, headers=send)
            r = conn.getresponse()
            body = r.read()
            return r.status, [(k, v) for k, v in r.getheaders() if k.lower() not in ("transfer-encoding",
                                                                                    "connection")], body
        finally:
            conn.close()

    def reply(self, status: int, headers: list[tuple[str, str]], body: bytes, length: int | None = None) -> None:
        """Send an answer; blob bodies are counted."""
        self.send_response(status)
        for k, v in headers:
            if k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            if "/blobs/" in self.path:
                with self.server.lock:
                    self.server.blob_bytes[self.path.rsplit("/", 1)[-1]] = \
                        self.server.blob_bytes.get(self.path.rsplit("/", 1)[-1], 0) + len(body)


class Proxy(ThreadingHTTPServer):
    """A proxy on 127.0.0.1 in front of `upstream` (host:port), with a byte count per blob digest."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream = upstream
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.hooks: list[Hook] = []
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.blob_bytes: dict[str, int] = {}
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client that hangs up in mid-answer (the stall and timeout tests) is expected here."""

    def reset(self) -> None:
        """Forget the counts."""
        with self.lock:
            self.requests.clear()
            self.blob_bytes.clear()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.shutdown()
        self.server_close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The session's open registry on 127.0.0.1 (fixtures are pushed into it on first use)."""
    need_tools()
    reg = Registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def proxy(registry: Registry) -> Iterator[Callable[[], Proxy]]:
    """Make proxies in front of the session registry; each is stopped after the test."""
    made: list[Proxy] = []

    def make(upstream: str | None = None) -> Proxy:
        p = Proxy(upstream or registry.host)
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in made:
            p.stop()


def single_image_fixtures() -> list[str]:
    """Fixture archives holding one image that skopeo can push as they are."""
    if not truth_index() and not IN_CI:
        return []
    return sorted(n for n, e in truth_index().items() if len(e["images"]) == 1 and not n.endswith(".gz"))


# -- pushing hand-made images through the registry API (for layers skopeo would recompress) ---------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload_blob(host: str, repo: str, data: bytes) -> str:
    """A monolithic upload (POST, then PUT with the digest); the digest."""
    digest = _sha(data)
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request("POST", f"/v2/{repo}/blobs/uploads/")
        r = conn.getresponse()
        r.read()
        assert r.status == 202, r.status
        loc = r.getheader("Location") or ""
        path = loc.split(host, 1)[-1] if "://" in loc else loc
        conn.request("PUT", path + ("&" if "?" in path else "?") + f"digest={digest}", body=data,
                     headers={"Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        r.read()
        assert r.status == 201, (r.status, path)
    finally:
        conn.close()
    return digest


def push_manifest(host: str, repo: str, tag: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
    """PUT a manifest under a tag; its digest."""
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request("PUT", f"/v2/{repo}/manifests/{tag}", body=body, headers={"Content-Type": media_type})
        r = conn.getresponse()
        text = r.read()
        assert r.status == 201, (r.status, text)
    finally:
        conn.close()
    return _sha(body)


def push_image(host: str, repo: str, tag: str, layers: list[tuple[bytes, str]], config: dict) -> dict:
    """Upload config and layer blobs (bytes, media type) and a manifest naming them; the manifest as a dict."""
    import json

    cfg = json.dumps(config).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": upload_blob(host, repo, cfg), "size": len(cfg)},
                "layers": [{"mediaType": mt, "digest": upload_blob(host, repo, b), "size": len(b)}
                           for b, mt in layers]}
    push_manifest(host, repo, tag, json.dumps(manifest).encode())
    return manifest


def _mounted(path: Path) -> bool:
    """Whether /proc/mounts lists `path` (a mount whose process died too, which ismount() misses)."""
    target = os.fsencode(os.path.abspath(path)).replace(b" ", b"\\040")
    with open("/proc/mounts", "rb") as fh:
        return any(line.split(b" ")[1] == target for line in fh)


@pytest.fixture
def mount(need_fuse: None, tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(place, **mount_kwargs) -> mountpoint: a background mount (its log and, unless given, its cache in
    the test's folder), unmounted afterwards, even when the test fails."""
    import imgfs.fuse

    points: list[Path] = []

    def do(place: str | Path, **kw: object) -> Path:
        mp = tmp_path / f"mnt{len(points)}"
        mp.mkdir()
        points.append(mp)
        kw.setdefault("log_file", str(mp) + ".log")
        kw.setdefault("cache_dir", str(tmp_path / "cache"))
        imgfs.fuse.mount(str(place), str(mp), **kw)  # type: ignore[arg-type]
        return mp

    try:
        yield do
    finally:
        for mp in points:
            for args in (["-u"], ["-uz"]):
                if _mounted(mp):
                    subprocess.run(["fusermount", *args, str(mp)], capture_output=True)


@pytest.fixture(scope="session")
def regtools() -> SimpleNamespace:
    """The helpers above, for test modules (which cannot import a conftest by name)."""
    return SimpleNamespace(free_port=free_port, push_image=push_image, push_manifest=push_manifest,
                           upload_blob=upload_blob, Registry=Registry, OCI_LAYER=OCI_LAYER)
