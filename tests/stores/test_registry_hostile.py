"""A hostile or failing registry (a proxy in front of the real one that misbehaves on purpose): each case is
a clear one-line error or the right bytes, never a hang or wrong bytes; a mount answers EIO and stays up."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

import imgfs
from clihelp import assert_one_line_error, run
from tarmaker import F, config_for, tar_of

SEED = "seed.podman-docker.tar"


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads time out after one second here, so a stalled server fails a test in seconds."""
    monkeypatch.setenv("IMGFS_REGISTRY_TIMEOUT", "1")


def _via(registry, proxy) -> tuple[str, object]:
    ref = registry.push(SEED)
    p = proxy()
    return ref.replace(registry.host, p.host), p


def _blob(h) -> bool:
    return "/blobs/sha256:" in h.path and h.command == "GET"


def test_blob_bytes_that_do_not_match_the_digest_are_refused(registry, proxy, capsysbinary, tmp_path) -> None:
    via, p = _via(registry, proxy)

    def flip(h) -> bool:
        if not _blob(h) or "Range" in h.headers:
            return False
        status, headers, body = h.forward()
        if len(body) > 10000:  # a layer, not the config
            body = body[:-100] + bytes([body[-100] ^ 1]) + body[-99:]
        h.reply(status, headers, body)
        return True

    p.hooks.append(flip)
    res = run(capsysbinary, "--cache-dir", tmp_path, "ls", via, "/", "--layer", "1")
    assert_one_line_error(res, "do not match its digest")


def test_a_manifest_too_large_is_refused(registry, proxy, capsysbinary) -> None:
    via, p = _via(registry, proxy)

    def huge(h) -> bool:
        if "/manifests/" not in h.path:
            return False
        h.reply(200, [("Content-Type", "application/vnd.oci.image.manifest.v1+json")], b" " * (5 << 20))
        return True

    p.hooks.append(huge)
    res = run(capsysbinary, "ls", via)
    assert_one_line_error(res, "manifest is larger than")


def test_endless_redirects_end(registry, proxy, capsysbinary, tmp_path) -> None:
    via, p = _via(registry, proxy)

    def loop(h) -> bool:
        if not _blob(h):
            return False
        h.reply(307, [("Location", h.path)], b"")
        return True

    p.hooks.append(loop)
    res = run(capsysbinary, "--cache-dir", tmp_path, "ls", via)
    assert_one_line_error(res, "more than 10 redirects")


def test_a_server_ignoring_range_still_gives_the_right_bytes(registry, regtools, proxy) -> None:
    big = os.urandom(2 << 20)
    layer = tar_of([F("big.bin", big), F("z.txt", b"last\n")])
    regtools.push_image(registry.host, "norange", "t1", [(layer, regtools.OCI_LAYER)], config_for([layer]))
    p = proxy()

    def ignore(h) -> bool:
        if not _blob(h):
            return False
        status, headers, body = h.forward({k: v for k, v in h.headers.items() if k.lower() != "range"})
        h.reply(status, headers, body)
        return True

    p.hooks.append(ignore)
    with imgfs.open_archive(f"docker://{p.host}/norange:t1", use_cache=False) as a:
        tree = a.images[0].merged()
        assert tree.read(tree.file("/big.bin"), 12345, 5000) == big[12345:17345]
        assert tree.read(tree.file("/z.txt"), 0, 10) == b"last\n"


@pytest.mark.parametrize("ranged", [False, True], ids=["whole", "ranges"])
def test_a_blob_shorter_than_its_descriptor_is_an_error(ranged: bool, registry, regtools, proxy, capsysbinary,
                                                        tmp_path) -> None:
    if ranged:
        layer = tar_of([F("big.bin", os.urandom(2 << 20)), F("z.txt", b"last\n")])
        regtools.push_image(registry.host, "short", "t1", [(layer, regtools.OCI_LAYER)], config_for([layer]))
        via, p = "docker://{}/short:t1", proxy()
        via = via.format(p.host)
    else:
        via, p = _via(registry, proxy)

    def cut(h) -> bool:
        if not _blob(h):
            return False
        status, headers, body = h.forward()
        if len(body) > 10000:
            body = body[:len(body) // 2]
        h.reply(status, [(k, v) for k, v in headers if k.lower() != "content-range"]
                + [(k, v) for k, v in headers if k.lower() == "content-range"], body)
        return True

    p.hooks.append(cut)
    res = run(capsysbinary, "--cache-dir", tmp_path, "ls", via, "/", "--layer", "1")
    assert_one_line_error(res, "shorter than its descriptor" if ranged else "bytes, the manifest says")


def test_a_stall_in_mid_body_times_out(registry, proxy, capsysbinary, tmp_path) -> None:
    via, p = _via(registry, proxy)
    release = threading.Event()

    def stall(h) -> bool:
        if not _blob(h):
            return False
        status, headers, body = h.forward()
        if len(body) < 10000:
            h.reply(status, headers, body)
            return True
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[:len(body) // 2])
        h.wfile.flush()
        release.wait(30)
        return True

    p.hooks.append(stall)
    start = time.monotonic()
    try:
        res = run(capsysbinary, "--cache-dir", tmp_path, "ls", via, "/", "--layer", "1")
    finally:
        release.set()
    assert_one_line_error(res, "timed out")
    assert time.monotonic() - start < 20  # 4 tries of 1 s each, and the backoff between them


def test_a_401_loop_is_a_refusal(registry, proxy, capsysbinary) -> None:
    via, p = _via(registry, proxy)
    tokens = []

    def deny(h) -> bool:
        if h.path.startswith("/token"):
            tokens.append(h.path)
            h.reply(200, [("Content-Type", "application/json")], b'{"token": "t", "expires_in": 300}')
            return True
        h.reply(401, [("WWW-Authenticate", f'Bearer realm="http://{p.host}/token",service="s"')], b"")
        return True

    p.hooks.append(deny)
    res = run(capsysbinary, "ls", via)
    assert_one_line_error(res, "access denied")
    assert len(tokens) == 1


def test_transient_failures_are_retried(registry, proxy, capsysbinary, tmp_path) -> None:
    via, p = _via(registry, proxy)
    failures = {"n": 0}

    def flaky(h) -> bool:
        if not _blob(h) or failures["n"] >= 3:
            return False
        failures["n"] += 1
        if failures["n"] % 2:
            h.reply(503, [], b"busy")
        else:
            h.reply(429, [("Retry-After", "0")], b"slow down")
        return True

    p.hooks.append(flaky)
    res = run(capsysbinary, "--cache-dir", tmp_path, "cat", via, "/app/trace.log", "--layer", "-1")
    assert res.rc == 0 and res.out == b"trace\n", res.err
    assert failures["n"] == 3


def test_a_mount_answers_eio_when_the_registry_fails_and_stays_up(registry, regtools, proxy, mount,
                                                                  tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    layer = tar_of([F("a.txt", b"first\n"), F("big.bin", big), F("z.txt", b"last\n")])
    regtools.push_image(registry.host, "eio", "t1", [(layer, regtools.OCI_LAYER)], config_for([layer]))
    p = proxy()
    log = tmp_path / "mount.log"
    mp = mount(f"docker://{p.host}/eio:t1", cache_dir=str(tmp_path / "cache"), log_file=str(log),
                        store_options={"timeout": 1})
    assert (mp / "merged" / "a.txt").read_bytes() == b"first\n"

    def fail(h) -> bool:
        if not _blob(h):
            return False
        h.reply(500, [], b"down")
        return True

    p.hooks.append(fail)
    start = time.monotonic()
    with open(mp / "merged" / "big.bin", "rb") as fh:
        fh.seek(2 << 20)
        with pytest.raises(OSError) as e:
            fh.read(4096)
    assert e.value.errno == errno.EIO
    assert time.monotonic() - start < 20
    assert (mp / "merged" / "a.txt").read_bytes() == b"first\n"  # the mount is still up and serving
    p.hooks.remove(fail)
    with open(mp / "merged" / "big.bin", "rb") as fh:
        fh.seek(2 << 20)
        assert fh.read(4096) == big[2 << 20:(2 << 20) + 4096]  # and recovers with the registry
    lines = [ln for ln in log.read_text().splitlines() if "big.bin" in ln]
    assert len(lines) == 1 and "HTTP 500" in lines[0] or "failed after" in lines[0], lines
