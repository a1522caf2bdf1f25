#!/usr/bin/env python3
"""Benchmark imgfs on docker:// images against today's ways (skopeo copy + the seed script, skopeo + umoci).

big and many are pushed (gzip layers, by skopeo) into a loopback Distribution registry whose storage is kept
in --storage, so later runs do not push again. Every command goes through a proxy that counts the blob bytes
it serves; "direct" passes them straight on, "shaped" adds 20 ms to every request and caps the rate at
200 Mbit/s (a CI runner near a cloud registry). Run: scripts/bench_registry.py [--images big,many] [--runs N];
or scripts/bench.py --registry.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEFAULT_IMGDIR = Path(os.environ.get("BENCH_IMG", "/root/.cache/imgfs-bench/img"))
DEFAULT_STORAGE = DEFAULT_IMGDIR.parent / "registry" / "storage"
SEED = Path("/work/shared/bench/seed_better.sh")
REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def log(*args: object) -> None:
    print("[bench-registry]", *args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the registry and the proxy

class Registry:
    """docker-registry on 127.0.0.1 over a kept storage folder."""

    def __init__(self, storage: Path, work: Path) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        cfg = work / "registry.yml"
        cfg.write_text("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n"
                       f"  filesystem:\n    rootdirectory: {storage}\nhttp:\n  addr: {self.host}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("docker-registry did not start") from None
                time.sleep(0.05)

    def has(self, repo: str, tag: str) -> bool:
        c = http.client.HTTPConnection(self.host, timeout=30)
        c.request("HEAD", f"/v2/{repo}/manifests/{tag}", headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        ok = c.getresponse().status == 200
        c.close()
        return ok

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class _Bucket:
    """A rate cap shared by every connection of the proxy (bytes per second; 0: none)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            self.next = max(self.next, now) + n / self.rate
            wait = self.next - now
        if wait > 0:
            time.sleep(wait)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ShapingProxy

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        if srv.delay:
            time.sleep(srv.delay)
        conn = getattr(self, "_up", None)
        if conn is None:
            conn = self._up = http.client.HTTPConnection(srv.upstream, timeout=120)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():  # repeated headers (skopeo's Accept lines) as they came
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("connection", "transfer-encoding"):
                self.send_header(k, v)
        length = r.getheader("Content-Length")
        if length is None and self.command != "HEAD":
            data = r.read()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.end_headers()
        if self.command == "HEAD":
            r.read()
            return
        blob = "/blobs/" in self.path
        while True:
            chunk = r.read(64 << 10)
            if not chunk:
                break
            srv.bucket.take(len(chunk))
            self.wfile.write(chunk)
            if blob:
                with srv.lock:
                    srv.blob_bytes += len(chunk)
        with srv.lock:
            srv.requests += 1


class ShapingProxy(ThreadingHTTPServer):
    """A keep-alive HTTP proxy on 127.0.0.1: `delay` seconds added to every request, `rate` bytes/s in all."""

    daemon_threads = True

    def __init__(self, upstream: str, delay: float = 0.0, rate: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream, self.delay, self.bucket = upstream, delay, _Bucket(rate)
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.blob_bytes = 0
        self.requests = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def take_count(self) -> int:
        with self.lock:
            n, self.blob_bytes = self.blob_bytes, 0
            self.requests = 0
        return n

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


# ---------------------------------------------------------------- the commands

def sh(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip()[-400:]}")
    return took


def imgfs_exe() -> str:
    here = REPO_ROOT / ".venv" / "bin" / "imgfs"
    return str(here) if here.exists() else shutil.which("imgfs") or "imgfs"


class Case:
    """One measured command: fn(ref, scratch, cache) -> seconds; cold cases get a fresh cache each run.

    `trace`: the case reads /app/trace.log, which only big has.
    """

    def __init__(self, name: str, fn: Callable[[str, Path, Path], float], warm: bool = False,
                 trace: bool = True) -> None:
        self.name, self.fn, self.warm, self.trace = name, fn, warm, trace


def _unmount(mnt: Path) -> None:
    subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True)
    if os.path.ismount(mnt):
        subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)


def _mount_cp(what: str) -> Callable[[str, Path, Path], float]:
    def run(ref: str, scratch: Path, cache: Path) -> float:
        mnt = scratch / "mnt"
        mnt.mkdir(exist_ok=True)
        t = time.perf_counter()
        sh([imgfs_exe(), "--cache-dir", str(cache), "mount", ref, str(mnt)])
        try:
            if what == "ready":
                os.listdir(mnt / "merged")
            else:
                src = (next((mnt / "layers").glob("*strace*")) / "app" / "trace.log") if what == "layer" \
                    else mnt / "merged" / "app" / "trace.log"
                shutil.copyfile(src, scratch / "trace.log")
            return time.perf_counter() - t
        finally:
            _unmount(mnt)
    return run


def _cat(ref: str, scratch: Path, cache: Path) -> float:
    return sh([imgfs_exe(), "--cache-dir", str(cache), "cat", ref, "/app/trace.log", "--layer", "-1"])


SKOPEO = ["skopeo", "copy", "-q", "--insecure-policy", "--src-tls-verify=false"]


def _skopeo_seed(ref: str, scratch: Path, cache: Path) -> float:
    env = {**os.environ, "HOME": str(scratch)}  # skopeo's blob-info cache: private, so it is cold
    t = time.perf_counter()
    sh(SKOPEO + [ref, f"docker-archive:{scratch}/x.tar"], env=env)
    (scratch / "seed").mkdir()
    sh(["bash", str(SEED), str(scratch / "x.tar")], cwd=scratch / "seed")
    return time.perf_counter() - t


def _skopeo_umoci(ref: str, scratch: Path, cache: Path) -> float:
    env = {**os.environ, "HOME": str(scratch)}
    t = time.perf_counter()
    sh(SKOPEO + [ref, f"oci:{scratch}/oci:img"], env=env)
    sh(["umoci", "unpack", "--image", f"{scratch}/oci:img", str(scratch / "bundle")], env=env)
    shutil.copyfile(scratch / "bundle" / "rootfs" / "app" / "trace.log", scratch / "trace.log")
    return time.perf_counter() - t


def _skopeo_dir(ref: str, scratch: Path, cache: Path) -> float:
    return sh(SKOPEO + [ref, f"dir:{scratch}/dir"], env={**os.environ, "HOME": str(scratch)})


CASES = [
    Case("imgfs cat --layer -1, cold", _cat),
    Case("imgfs cat --layer -1, warm", _cat, warm=True),
    Case("mount + cp layers/*strace*/app/trace.log, cold", _mount_cp("layer")),
    Case("mount + cp merged/app/trace.log, cold", _mount_cp("merged")),
    Case("mount + cp merged/app/trace.log, warm", _mount_cp("merged"), warm=True),
    Case("mount + ls merged/ (ready), cold", _mount_cp("ready"), trace=False),
    Case("mount + ls merged/ (ready), warm", _mount_cp("ready"), warm=True, trace=False),
    Case("skopeo copy docker-archive: + seed_better.sh", _skopeo_seed),
    Case("skopeo copy oci: + umoci unpack", _skopeo_umoci),
    Case("skopeo copy dir: (the layers streamed once)", _skopeo_dir, trace=False),
]


def push(reg: Registry, name: str, imgdir: Path, work: Path) -> None:
    if reg.has(name, "1"):
        return
    log(f"pushing {name} (gzip layers) with skopeo; kept for later runs")
    home = work / f"push-{name}"
    home.mkdir()
    sh(["skopeo", "copy", "-q", "--insecure-policy", "--dest-tls-verify=false",
        f"docker-archive:{imgdir / (name + '.tar')}", f"docker://{reg.host}/{name}:1"],
       env={**os.environ, "HOME": str(home)})


LINKS = {"direct": (0.0, 0.0), "shaped": (0.020, 200e6 / 8)}  # (seconds added per request, bytes/s cap)


def run_registry(names: list[str], imgdir: Path, runs: int, work: Path, storage: Path = DEFAULT_STORAGE,
                 cases: list[str] | None = None, links: list[str] | None = None) -> dict:
    """Measure every case on every image, direct and shaped; {image: {link: {case: (median s, bytes)}}}."""
    storage.mkdir(parents=True, exist_ok=True)
    facts = json.loads((imgdir / "images.json").read_text())
    reg = Registry(storage, work)
    out: dict = {}
    try:
        for name in names:
            push(reg, name, imgdir, work)
        for link in links or list(LINKS):
            delay, rate = LINKS[link]
            proxy = ShapingProxy(reg.host, delay, rate)
            try:
                for name in names:
                    ref = f"docker://{proxy.host}/{name}:1"
                    for case in CASES:
                        if cases and not any(c in case.name for c in cases):
                            continue
                        if case.trace and not facts.get(name, {}).get("trace_path"):
                            continue
                        times, sizes = [], []
                        for n in range(runs):
                            scratch = Path(tempfile.mkdtemp(prefix="run-", dir=work))
                            cache = work / f"cache-{name}-{link}-{case.name[:20]}-{n}"
                            if case.warm:
                                slug = "".join(c if c.isalnum() else "-" for c in case.name)
                                cache = work / f"cache-{name}-{link}-{slug}"  # each warm case its own
                                if not cache.exists():
                                    case.fn(ref, scratch, cache)  # the cold run that warms it: not counted
                            proxy.take_count()
                            try:
                                times.append(case.fn(ref, scratch, cache))
                            except RuntimeError as e:
                                log(f"{name} {link} {case.name}: {e}")
                            finally:
                                shutil.rmtree(scratch, ignore_errors=True)
                                if not case.warm:
                                    shutil.rmtree(cache, ignore_errors=True)
                            sizes.append(proxy.take_count())
                        if not times:
                            continue
                        out.setdefault(name, {}).setdefault(link, {})[case.name] = (
                            statistics.median(times), int(statistics.median(sizes)))
                        log(f"{name} {link} {case.name}: {statistics.median(times):.2f} s, "
                            f"{statistics.median(sizes) / MiB:.1f} MiB")
            finally:
                proxy.stop()
    finally:
        reg.stop()
    return out


def report(results: dict, imgdir: Path) -> str:
    """A markdown table per image: seconds and MiB of blobs downloaded, direct and shaped."""
    lines = []
    facts = json.loads((imgdir / "images.json").read_text())
    for name, links in results.items():
        total = sum(facts.get(name, {}).get("layer_sizes", []))
        lines += [f"\n{name} (uncompressed layers {total / MiB:.0f} MiB; pushed with gzip layers)\n",
                  "| command | direct s | direct MiB | shaped s | shaped MiB |", "|---|---|---|---|---|"]
        for case in CASES:
            cells = []
            for link in ("direct", "shaped"):
                t, b = links.get(link, {}).get(case.name, (None, None))
                cells += ["-" if t is None else f"{t:.2f}", "-" if b is None else f"{b / MiB:.1f}"]
            lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="big,many", help="comma-separated, of big, many (default both)")
    p.add_argument("--runs", type=int, default=3, help="runs per figure, the median is reported (default 3)")
    p.add_argument("--imgdir", type=Path, default=DEFAULT_IMGDIR)
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help="the registry's storage (kept)")
    p.add_argument("--cases", help="comma-separated substrings of the case names to run (default all)")
    p.add_argument("--links", default="direct,shaped", help="comma-separated, of direct, shaped (default both)")
    p.add_argument("--json", type=Path, metavar="OUT", help="save the raw figures here")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="imgfs-bench-registry-"))
    try:
        res = run_registry(a.images.split(","), a.imgdir, a.runs, work, a.storage,
                           a.cases.split(",") if a.cases else None, a.links.split(","))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    print(report(res, a.imgdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
