"""Authentication and TLS against real servers: htpasswd Basic auth over TLS (a CA and certificate made by
openssl here), Distribution's token auth with a small token server, auth files and credential helpers, and
redirects that must not carry Authorization to another host."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from clihelp import assert_one_line_error, run

SEED = "seed.podman-docker.tar"
USER, PASSWORD = "alice", "s3cret-pw"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 signed by it, and a token-signing key and certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=imgfs test CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "token.key", "-out", "token.crt",
             "-days", "2", "-subj", "/CN=imgfs token signer", cwd=d)
    _openssl("x509", "-in", "token.crt", "-outform", "DER", "-out", "token.der", cwd=d)
    return d


@pytest.fixture(scope="session")
def basic_registry(registry, regtools, pki: Path, tmp_path_factory: pytest.TempPathFactory):
    """A second registry over the same storage: TLS with the test CA's certificate, htpasswd (bcrypt) auth."""
    registry.push(SEED)
    root = tmp_path_factory.mktemp("basic-registry")
    hp = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True).stdout
    (root / "htpasswd").write_text(hp)
    reg = regtools.Registry(root, registry.storage, tls=(pki / "server.crt", pki / "server.key"),
                            htpasswd=root / "htpasswd")
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def certs(pki: Path, tmp_path: Path) -> Path:
    """A --cert-dir holding the test CA, as containers' certs.d lays it out."""
    d = tmp_path / "certs"
    d.mkdir()
    (d / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    return d


def _ref(reg, registry) -> str:
    return registry.push(SEED).replace(registry.host, reg.host)


def test_basic_auth_over_tls_with_a_private_ca(basic_registry, registry, certs, capsysbinary) -> None:
    ref = _ref(basic_registry, registry)
    res = run(capsysbinary, "cat", ref, "/app/trace.log", "--cert-dir", certs, "--creds", f"{USER}:{PASSWORD}")
    assert res.rc == 0 and res.out == b"trace\n", res.err


def test_tls_without_the_ca_is_refused_unless_verification_is_off(basic_registry, registry, capsysbinary) -> None:
    ref = _ref(basic_registry, registry)
    res = run(capsysbinary, "ls", ref, "--creds", f"{USER}:{PASSWORD}")
    assert_one_line_error(res, "not trusted", "--cert-dir")
    res = run(capsysbinary, "cat", ref, "/app/trace.log", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}")
    assert res.rc == 0 and res.out == b"trace\n", res.err


def test_missing_or_wrong_credentials_are_one_line_and_never_shown(basic_registry, registry, certs,
                                                                   capsysbinary, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no auth file of the user's
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    ref = _ref(basic_registry, registry)
    res = run(capsysbinary, "ls", ref, "--cert-dir", certs)
    assert_one_line_error(res, "user name and password")
    res = run(capsysbinary, "ls", ref, "--cert-dir", certs, "--creds", f"{USER}:wrong-password")
    assert_one_line_error(res, "access denied")
    assert "wrong-password" not in res.err


def test_credentials_come_from_the_auth_files(basic_registry, registry, certs, capsysbinary, monkeypatch,
                                              tmp_path) -> None:
    ref = _ref(basic_registry, registry)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
    res = run(capsysbinary, "cat", ref, "/app/trace.log", "--cert-dir", certs)
    assert res.rc == 0 and res.out == b"trace\n", res.err
    # ~/.docker/config.json with a credential helper (docker-credential-NAME get, on $PATH)
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"credHelpers": {basic_registry.host: "imgfstest"}}))
    helper = tmp_path / "bin" / "docker-credential-imgfstest"
    helper.parent.mkdir()
    helper.write_text("#!/bin/sh\nread server\n"
                      f"printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' "
                      "\"$server\"\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    res = run(capsysbinary, "cat", ref, "/app/trace.log", "--cert-dir", certs)
    assert res.rc == 0 and res.out == b"trace\n", res.err


def test_redirected_blobs_never_get_the_authorization_header(registry, proxy, capsysbinary, tmp_path) -> None:
    ref = registry.push(SEED)
    storage = proxy()  # "blob storage" on another port
    front = proxy()
    good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def front_door(h) -> bool:
        if h.headers.get("Authorization") != good:
            h.reply(401, [("WWW-Authenticate", 'Basic realm="test"')], b"")
            return True
        if "/blobs/sha256:" in h.path and h.command == "GET":
            h.reply(307, [("Location", f"http://{storage.host}{h.path}")], b"")
            return True
        return False

    front.hooks.append(front_door)
    res = run(capsysbinary, "--cache-dir", tmp_path, "cat", ref.replace(registry.host, front.host),
              "/app/trace.log", "--creds", f"{USER}:{PASSWORD}")
    assert res.rc == 0 and res.out == b"trace\n", res.err
    assert storage.requests, "the blobs were not fetched from the redirect target"
    assert all("Authorization" not in headers for _, _, headers in storage.requests)
    assert any(headers.get("Authorization") == good for _, _, headers in front.requests)


# -- Distribution's token auth, with a token server written here ----------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer(ThreadingHTTPServer):
    """Issues RS256 JWTs (signed by openssl) for pull scopes to USER:PASSWORD; counts what it issued."""

    daemon_threads = True

    def __init__(self, pki: Path, expires: int) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.pki, self.expires = pki, expires
        self.issued: list[str] = []
        self.host = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def token(self, scope: str, service: str) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode((self.pki / "token.der").read_bytes())
                                                        .decode()]}
        now = int(time.time())
        access = []
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository":
            access.append({"type": "repository", "name": name, "actions": actions.split(",")})
        claims = {"iss": "imgfs-test", "sub": USER, "aud": service, "exp": now + self.expires, "nbf": now - 10,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.pki / "token.key")],
                             input=signing.encode(), capture_output=True, check=True).stdout
        self.issued.append(scope)
        return f"{signing}.{_b64(sig)}"


class _TokenHandler(BaseHTTPRequestHandler):
    server: TokenServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        q = parse_qs(urlsplit(self.path).query)
        want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"token": self.server.token(q["scope"][0], q["service"][0]),
                           "expires_in": self.server.expires}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def token_registry(registry, regtools, pki: Path, tmp_path: Path):
    """A registry over the session's storage that wants Bearer tokens from a TokenServer."""
    registry.push(SEED)
    tokens = TokenServer(pki, expires=300)
    reg = regtools.Registry(tmp_path, registry.storage, token={
        "realm": f"http://{tokens.host}/token", "service": "imgfs-registry", "issuer": "imgfs-test",
        "rootcertbundle": str(pki / "token.crt")})
    try:
        yield reg, tokens
    finally:
        reg.stop()
        tokens.shutdown()
        tokens.server_close()


def test_bearer_tokens_are_fetched_once_and_kept(token_registry, registry, capsysbinary, tmp_path) -> None:
    reg, tokens = token_registry
    ref = registry.push(SEED).replace(registry.host, reg.host)
    res = run(capsysbinary, "--cache-dir", tmp_path, "cat", ref, "/app/trace.log", "--creds", f"{USER}:{PASSWORD}")
    assert res.rc == 0 and res.out == b"trace\n", res.err
    repo = ref.split("/", 3)[3].rsplit(":", 1)[0]
    assert tokens.issued == [f"repository:{repo}:pull"]  # one token served every request of the command
    res = run(capsysbinary, "ls", ref, "--creds", f"{USER}:not-it")
    assert_one_line_error(res, "token service refused")


def test_an_expired_token_is_fetched_again(token_registry, registry) -> None:
    import imgfs

    reg, tokens = token_registry
    tokens.expires = 11  # kept for 1 s: imgfs lets a token go 10 s before it expires
    ref = registry.push(SEED).replace(registry.host, reg.host)
    with imgfs.open_archive(ref, use_cache=False, store_options={"creds": f"{USER}:{PASSWORD}"}) as a:
        assert len(tokens.issued) == 1
        time.sleep(1.2)
        tree = a.images[0].layer_tree(len(a.images[0].layers) - 1)
        assert tree.read(tree.file("/app/trace.log"), 0, 100) == b"trace\n"
    assert len(tokens.issued) == 2
