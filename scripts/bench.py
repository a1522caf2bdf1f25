#!/usr/bin/env python3
"""Benchmark imgfs against ratarmount 1.3, the same tree extracted to local disk, and the seed article's scripts.

All peers run in one invocation on one machine; figures are medians of --runs runs (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_IMGDIR = Path(os.environ.get("BENCH_IMG", "/root/.cache/imgfs-bench/img"))
SEED_DIR = Path("/work/shared/bench")
VENV_BIN = Path("/work/venv-dev/bin")
# image name -> (file in --imgdir, family, has manifest.json); the family is the images.json entry of the tree
IMAGES = {"big": ("big.tar", "big", True), "big-oci-gzip": ("big-oci-gzip.tar", "big", False),
          "big.tar.gz": ("big.tar.gz", "big", True), "many": ("many.tar", "many", True),
          "million": ("million.tar", "million", True)}
MILLION = 1_000_000  # entries of the generated "million" image (made by this script, not make_images.py)
TAIL_BYTES = 1 << 20
MOUNT_TIMEOUT = 900.0
MiB = 1 << 20


# ---------------------------------------------------------------- images

@dataclass
class Image:
    """One benchmark image and the facts the cases need, from images.json."""

    name: str
    path: Path
    source: Path                      # the uncompressed docker-save image of the same tree (local-disk peer)
    layers: list[str]                 # layer blob paths inside the (decompressed) outer tar
    entries: int                      # tar entries over all layers
    trace: str | None = None          # /app/trace.log
    trace_layer: int | None = None
    trace_sha256: str | None = None
    artifact: str | None = None       # the 1 GiB file
    artifact_layer: int | None = None
    gz_layer: int | None = None       # the biggest gzip-compressed layer, if any
    gz_file: str | None = None        # the last regular file in it
    docker: bool = False              # has manifest.json, which the seed scripts need


def layer_entries(stats: dict) -> int:
    """Tar entries of all layers; images.json counts them per layer, or by kind for `many`."""
    kinds = ("files", "dirs", "symlinks", "hardlinks", "whiteouts")
    return sum(s.get("entries", sum(s.get(k, 0) for k in kinds)) for s in stats.values())


def _header(name: bytes, size: int, kind: bytes) -> bytes:
    """One ustar header block, as Go's archive/tar writes it for plain names."""
    mode = b"0000755" if kind == b"5" else b"0000644"
    h = bytearray(name.ljust(100, b"\0") + mode + b"\0" + b"0000000\0" * 2 + b"%011o\0" % size + b"14615502000\0"
                  + b" " * 8 + kind + b"\0" * 100 + b"ustar\x0000" + b"\0" * 247)
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def make_million(imgdir: Path) -> dict:
    """Write million.tar (a docker-save with one layer of MILLION entries: 1000 dirs of empty files) once."""
    path = imgdir / "million.tar"
    layer_name = "blobs/sha256/" + "0" * 63 + "1"
    if not path.exists():
        log(f"writing {path} ({MILLION} entries, once)")
        with open(path.with_suffix(".tmp"), "wb") as layer:
            for d in range(MILLION // 1000):
                layer.write(_header(b"d%04d/" % d, 0, b"5"))
                layer.write(b"".join(_header(b"d%04d/f%04d" % (d, f), 0, b"0") for f in range(999)))
            layer.write(bytes(1024))
        layer_size = path.with_suffix(".tmp").stat().st_size
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [
            "sha256:" + "0" * 63 + "1"]}, "history": [{"created_by": "RUN make a million files"}]}).encode()
        manifest = json.dumps([{"Config": "config.json", "RepoTags": ["million:latest"],
                                "Layers": [layer_name]}]).encode()
        with tarfile.open(path.with_suffix(".part"), "w", format=tarfile.USTAR_FORMAT) as out:
            for name, data in (("config.json", config), ("manifest.json", manifest)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(layer_name)
            info.size = layer_size
            with open(path.with_suffix(".tmp"), "rb") as fh:
                out.addfile(info, fh)
        path.with_suffix(".tmp").unlink()
        path.with_suffix(".part").rename(path)
    return {"layers": [layer_name], "stats": {"layer": {"entries": MILLION}}}


def load_image(name: str, imgdir: Path, facts: dict) -> Image:
    """The named image with its own facts laid over its family's (big.tar.gz has none of its own)."""
    fname, family, docker = IMAGES[name]
    if family == "million":
        facts = dict(facts, million=make_million(imgdir))
    fam, own = facts[family], facts.get(name, {})
    img = Image(name=name, path=imgdir / fname, source=imgdir / IMAGES[family][0],
                layers=own.get("layers", fam["layers"]), entries=layer_entries(fam["stats"]),
                trace=fam.get("trace_path"), trace_layer=fam.get("trace_layer_index"),
                trace_sha256=fam.get("trace_sha256"), artifact=fam.get("artifact_path"),
                artifact_layer=fam.get("artifact_layer_index"), docker=docker)
    if img.path.suffix == ".tar":
        find_gzip_target(img, own.get("layer_sizes", []))
    return img


def find_gzip_target(img: Image, sizes: list[int]) -> None:
    """Set gz_layer/gz_file: the biggest gzip layer and its last regular file (one streaming pass over it)."""
    with tarfile.open(img.path) as outer:
        gz = [i for i, blob in enumerate(img.layers) if outer.extractfile(blob).read(2) == b"\x1f\x8b"]
        if not gz:
            return
        img.gz_layer = max(gz, key=lambda i: sizes[i] if sizes else outer.getmember(img.layers[i]).size)
        with tarfile.open(fileobj=outer.extractfile(img.layers[img.gz_layer]), mode="r|gz") as layer:
            for m in layer:
                if m.isreg():
                    img.gz_file = "/" + m.name.removeprefix("./").lstrip("/")


# ---------------------------------------------------------------- small helpers

def log(*args: object) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def find_tool(name: str) -> str | None:
    """The tool on PATH, else in the dev virtualenv."""
    found = shutil.which(name)
    if found:
        return found
    alt = VENV_BIN / name
    return str(alt) if alt.exists() else None


def sh(cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a shell command, return (seconds, stdout); a failure is an error, not a figure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["sh", "-c", cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate()
    except BaseException:  # interrupted: end the whole pipeline (its own process group), not just sh
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed ({proc.returncode}): {err.strip()[-500:]}")
    return dt, out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def drop_caches() -> None:
    """Empty the page cache (and with it FUSE's cached file data) so the next read comes from disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def can_drop_caches() -> bool:
    try:
        drop_caches()
        return True
    except OSError:
        return False


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below root, deepest first."""
    found = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            mp = Path(line.split()[1].replace("\\040", " "))
            if mp == root or root in mp.parents:
                found.append(mp)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def is_mounted(mnt: Path) -> bool:
    return mnt in mounts_under(mnt)


def unmount(mnt: Path) -> None:
    """fusermount -u (retried while busy), then the lazy -uz as a last resort."""
    for attempt in range(5):
        if not is_mounted(mnt):
            return
        subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True)
        time.sleep(0.05 * attempt)
    if is_mounted(mnt):
        subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)


def wait_gone(pid: int | None, timeout: float = 20.0) -> None:
    """Wait for a daemon to exit after its unmount, so it does not steal CPU from the next case."""
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (OSError, IndexError):
            return
        time.sleep(0.02)
    log(f"daemon {pid} still alive {timeout:.0f} s after unmount; sending SIGTERM")
    os.kill(pid, signal.SIGTERM)


def daemon_pid(mnt: Path) -> int | None:
    """The process serving mnt: the one whose command line names the mount point."""
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mnt) in argv:
            return int(d.name)
    return None


def vm_hwm(pid: int | None) -> float | None:
    """Peak resident set size (VmHWM) of pid, in MiB."""
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


# ---------------------------------------------------------------- peers (ways to see the image as a tree)

@dataclass
class Session:
    """A tree to time operations on: a FUSE mount with its daemon, or the local extracted directory."""

    mnt: Path
    t0: float                  # when the mount command started (perf_counter)
    ready: float | None = None  # seconds from t0 until the command returned and `ls MNT` worked
    pid: int | None = None


class Peer:
    """Something that shows an image as a directory tree; subclasses say how to open it and where files are."""

    name = ""
    ops: frozenset[str] = frozenset()

    def __init__(self, work: Path) -> None:
        self.work = work

    def available(self) -> str | None:
        """None when usable, else why not (printed, and the column is skipped)."""
        return None

    def reset(self) -> None:
        """Forget every persistent index, so the next open is cold."""

    def open(self, img: Image) -> Session:
        raise NotImplementedError

    def close(self, s: Session) -> None:
        """Undo open."""

    def tree(self, img: Image, s: Session) -> Path:
        """The directory `find` walks."""
        return s.mnt

    def file(self, img: Image, s: Session, path: str, layer: int | None) -> Path:
        """Where the image's file `path` (added by layer number `layer`) shows up."""
        return self.tree(img, s) / path.lstrip("/")


class FusePeer(Peer):
    """A FUSE mount made by a command that returns once the mount is up (the daemon forks off)."""

    ops = frozenset({"ready", "trace", "find1", "find2", "cat1", "cat2", "gztail", "rss", "findall", "statwalk"})

    def argv(self, img: Image, mnt: Path) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def open(self, img: Image) -> Session:
        mnt = self.work / f"mnt-{self.name.replace(' ', '-')}"
        mnt.mkdir(exist_ok=True)
        if is_mounted(mnt):
            unmount(mnt)
        logf = open(self.work / f"{self.name.replace(' ', '-')}.log", "ab")  # noqa: SIM115 (the daemon inherits it)
        s = Session(mnt=mnt, t0=time.perf_counter())
        proc = subprocess.Popen(self.argv(img, mnt), env=self.env(), stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=logf, start_new_session=True)
        try:
            rc = proc.wait(MOUNT_TIMEOUT)
            os.listdir(mnt)
            s.ready = time.perf_counter() - s.t0
        except BaseException:  # interrupted or timed out: no mount command may outlive the benchmark
            proc.kill()
            proc.wait()
            unmount(mnt)
            raise
        finally:
            logf.close()
        if rc != 0 or not is_mounted(mnt):
            unmount(mnt)
            tail = (self.work / f"{self.name.replace(' ', '-')}.log").read_text(errors="replace")[-800:]
            raise RuntimeError(f"{self.name} mount of {img.name} failed ({rc}): {tail}")
        s.pid = daemon_pid(mnt)
        return s

    def close(self, s: Session) -> None:
        unmount(s.mnt)
        wait_gone(s.pid)


class Imgfs(FusePeer):
    """`imgfs mount`; its index cache is kept inside the scratch dir through XDG_CACHE_HOME."""

    name = "imgfs"
    ops = FusePeer.ops | {"tracel"}

    def __init__(self, work: Path, fuse: str | None = None) -> None:
        super().__init__(work)
        self.exe = find_tool("imgfs")
        self.cache = work / "cache"
        self.fuse = fuse  # the libfuse version (--fuse); None: imgfs's default
        if fuse:
            self.name = f"imgfs fuse{fuse}"

    def available(self) -> str | None:
        if not self.exe:
            return "imgfs not found (pip install -e /work/main)"
        r = subprocess.run([self.exe, "mount", "--help"], capture_output=True)
        return None if r.returncode == 0 else "`imgfs mount` is not there yet"

    def reset(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return imgfs_env(self.work, self.cache)

    def argv(self, img: Image, mnt: Path) -> list[str]:
        return [self.exe or "imgfs", "mount", str(img.path), str(mnt)] + (["--fuse", self.fuse] if self.fuse else [])

    def tree(self, img: Image, s: Session) -> Path:
        return s.mnt / "merged"

    def layer_file(self, img: Image, s: Session, path: str, layer: int) -> Path:
        """The file in its own layer's directory, as `cp MNT/layers/*strace*/app/trace.log` reaches it."""
        names = sorted(os.listdir(s.mnt / "layers"), key=lambda n: int(n.split(" ", 1)[0]))
        return s.mnt / "layers" / names[layer] / path.lstrip("/")


def imgfs_env(work: Path, cache: Path) -> dict[str, str]:
    """imgfs's environment: its index cache in scratch, and byte-compiled modules as an installed wheel has.

    The dev env sets PYTHONDONTWRITEBYTECODE=1 over an editable source without __pycache__, which would add
    ~0.2 s of compiling to every imgfs start; PYTHONPYCACHEPREFIX keeps the .pyc files in scratch instead."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), PYTHONPYCACHEPREFIX=str(work / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def warm_up_imgfs(exe: str, peers: list[Peer], img: Image, work: Path) -> None:
    """Fill the .pyc prefix before anything imgfs is timed: compile the package, mount once, run the CLI once."""
    env = imgfs_env(work, work / "warmup-cache")
    python = Path(exe).read_text(errors="replace").splitlines()[0].removeprefix("#!").strip()
    code = "import compileall, os, imgfs; compileall.compile_dir(os.path.dirname(imgfs.__file__), quiet=1)"
    subprocess.run([python, "-c", code], env=env, check=True)
    sh(f"{exe} find {shlex.quote(str(img.path))} --name trace.log > /dev/null", env=env)
    for peer in peers:
        if isinstance(peer, Imgfs):
            try:
                s = peer.open(img)
                try:
                    os.listdir(peer.tree(img, s))
                finally:
                    peer.close(s)
            except Exception as e:  # the timed phases will report it
                log(f"imgfs warm-up mount failed: {e}")
    shutil.rmtree(work / "warmup-cache", ignore_errors=True)


class Ratarmount(FusePeer):
    """ratarmount --recursive; the blob transform is needed, else it never descends into Docker >= 25 blobs."""

    name = "ratarmount"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.exe = find_tool("ratarmount")
        self.index = work / "ratarmount-index"

    def available(self) -> str | None:
        if self.exe:
            return None
        return ("ratarmount not found; install it into its own venv: python3 -m venv /opt/rm && "
                "/opt/rm/bin/pip install ratarmount==1.3.0 && export PATH=/opt/rm/bin:$PATH")

    def reset(self) -> None:
        shutil.rmtree(self.index, ignore_errors=True)
        self.index.mkdir()

    def argv(self, img: Image, mnt: Path) -> list[str]:
        # --index-folders keeps its .index.sqlite files out of the image dir and ~/.ratarmount
        return [self.exe or "ratarmount", "--index-folders", str(self.index), "--recursive",
                "--recursive-extensions", ".tar", "--transform", r"^/blobs/sha256/([0-9a-f]{64})$",
                r"/blobs/sha256/\1.tar", str(img.path), str(mnt)]

    def file(self, img: Image, s: Session, path: str, layer: int | None) -> Path:
        # no merged view: a file is read inside the recursively mounted layer blob that holds it
        assert layer is not None
        return s.mnt / (img.layers[layer] + ".tar") / path.lstrip("/")


class LocalDisk(Peer):
    """The merged tree extracted once to local disk; operations run with a warm page cache."""

    name = "local disk"
    ops = frozenset({"trace", "find1", "find2", "cat1", "cat2", "statwalk"})

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.trees: dict[Path, Path] = {}

    def open(self, img: Image) -> Session:
        if img.source not in self.trees:
            self.trees[img.source] = extract_tree(img, self.work / f"local-{len(self.trees)}")
        return Session(mnt=self.trees[img.source], t0=time.perf_counter(), ready=0.0)


def extract_tree(img: Image, dest: Path) -> Path:
    """Extract img's merged tree into dest: `imgfs extract IMAGE / -o DEST` if present, else tarfile here."""
    t0 = time.perf_counter()
    exe = find_tool("imgfs")
    how = "imgfs extract"
    r = subprocess.run([exe, "extract", "-q", str(img.source), "/", "-o", str(dest)], capture_output=True,
                       text=True) if exe else None
    if r is None or r.returncode != 0:
        log(f"imgfs extract unavailable or failed ({r.stderr.strip()[-200:] if r else 'no imgfs'}); using tarfile")
        shutil.rmtree(dest, ignore_errors=True)
        apply_layers(img, dest)
        how = "tarfile"
    if img.trace and sha256(dest / img.trace.lstrip("/")) != img.trace_sha256:
        raise RuntimeError(f"extracted tree in {dest} has a wrong {img.trace}")
    os.sync()
    log(f"local disk: {img.source.name} extracted by {how} in {time.perf_counter() - t0:.1f} s")
    return dest


def apply_layers(img: Image, dest: Path) -> None:
    """Apply the layers bottom to top as Docker does: an entry replaces a lower one of another type, and a
    layer's whiteouts delete from the layers below before it lands."""
    kw = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
    dest.mkdir(parents=True)
    with tarfile.open(img.source) as outer:
        for blob in json.load(outer.extractfile("manifest.json"))[0]["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(blob), mode="r:*") as layer:
                members = layer.getmembers()
                for m in members:
                    p = dest / m.name
                    if p.is_symlink() or (p.exists() and m.isdir() != p.is_dir()):
                        remove(p)
                for m in members:
                    parent, base = os.path.split(m.name)
                    if (dest / parent).resolve() != dest.resolve() / parent:
                        continue  # never delete through a symlink
                    if base == ".wh..wh..opq":
                        for child in (dest / parent).glob("*"):
                            remove(child)
                    elif base.startswith(".wh."):
                        remove(dest / parent / base[4:])
                keep = [m for m in members if not os.path.basename(m.name).startswith(".wh.")]
                layer.extractall(dest, members=keep, **kw)


def remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


# ---------------------------------------------------------------- phases and operations

@dataclass(frozen=True)
class Phase:
    """One mount of a peer: whether the persistent index survives from the previous phase, what is timed."""

    name: str
    keep_index: bool
    drop_caches: bool  # page cache dropped before the mount and before the 1st read
    ops: tuple[str, ...]
    requires: str | None = None  # skip the phase (a mount) when the image has no such case


PHASES = (
    Phase("cold", False, False, ("ready", "trace", "find1", "find2", "cat1", "cat2", "rss")),
    Phase("whole", False, False, ("ready", "findall")),  # its own mount: the first walk of everything
    Phase("stat", False, False, ("ready", "statwalk")),  # its own mount: a first walk that stats everything
    Phase("warm", True, False, ("ready", "trace", "find1", "rss")),
    Phase("layer", False, False, ("ready", "tracel"), requires="tracel"),  # after warm: it empties the cache
    Phase("disk", False, True, ("ready", "trace", "cat1")),
    Phase("gz", False, False, ("ready", "gztail", "rss"), requires="gztail"),
    Phase("gzwarm", True, False, ("ready", "gztail"), requires="gztail"),
)


def applicable(op: str, img: Image) -> bool:
    needs = {"trace": img.trace, "tracel": img.trace, "cat1": img.artifact, "cat2": img.artifact,
             "gztail": img.gz_file}
    return needs.get(op, True) is not None


def run_phase(peer: Peer, img: Image, phase: Phase, work: Path, info: dict) -> dict[str, float]:
    """Open the peer once and time the phase's operations on it; returns {"phase.op": value}."""
    ops = [op for op in phase.ops if op in peer.ops and applicable(op, img)]
    if (phase.keep_index and not isinstance(peer, FusePeer)) or ops in ([], ["rss"], ["ready"]):
        return {}
    if phase.requires and not applicable(phase.requires, img):
        return {}
    if not phase.keep_index:
        peer.reset()
    if phase.drop_caches:
        drop_caches()
    out: dict[str, float] = {}
    s = peer.open(img)
    try:
        for op in ops:
            value = OPS[op](peer, img, s, phase, work, info)
            if value is not None:
                out[f"{phase.name}.{op}"] = value
    finally:
        peer.close(s)
    return out


def op_ready(peer: Peer, img: Image, s: Session, phase: Phase, work: Path, info: dict) -> float | None:
    return s.ready if isinstance(peer, FusePeer) else None


def _copy_trace(src: Path, peer: Peer, img: Image, s: Session, work: Path) -> float:
    """Copy trace.log out of `src`, check its bytes, and return the time since the mount started."""
    dst = work / "trace.log"
    shutil.copyfile(src, dst)
    dt = time.perf_counter() - s.t0
    if sha256(dst) != img.trace_sha256:
        raise RuntimeError(f"{peer.name}: wrong trace.log content")
    return dt


def op_trace(peer: Peer, img: Image, s: Session, phase: Phase, work: Path, info: dict) -> float:
    """Mount start to trace.log copied out (for local disk: the copy alone)."""
    assert img.trace is not None
    return _copy_trace(peer.file(img, s, img.trace, img.trace_layer), peer, img, s, work)


def op_trace_layer(peer: Peer, img: Image, s: Session, phase: Phase, work: Path, info: dict) -> float | None:
    """Mount start to trace.log copied out of its layer's directory (imgfs; ratarmount's trace is this already)."""
    if not isinstance(peer, Imgfs) or img.trace is None or img.trace_layer is None:
        return None
    return _copy_trace(peer.layer_file(img, s, img.trace, img.trace_layer), peer, img, s, work)


def op_find(peer: Peer, img: Image, s: Session, phase: Phase, work: Path, info: dict) -> float:
    dt, out = sh(f"find {shlex.quote(str(peer.tree(img, s)))} | wc -l")
    info.setdefault("find entries", {})[peer.name] = int(out)
    return dt


def op_find_all(peer: Peer, img: Image, s: Session, phase: Phase, work: Path, info: dict) -> float:
    """`find MNT | wc -l` over the whole mount (imgfs: every layer and merged/), 1st walk."""
    dt, out = sh(f"find {shlex.quote(str(s.mnt))} | wc -l")
    info.setdefault("find-all entries", {})[peer.name] = int(out)
    return dt


def op_stat_walk(peer: Peer, img: Image, s: Session, phase: Phase, work: Path, info: dict) -> float:
    """`find TREE -printf '%s\\n'` (a stat of every entry, as ls -l, du or tar do), 1st walk."""
    return sh(f"find {shlex.quote(str(peer.tree(img, s)))} -printf '%s\\n' | wc -l")[0]


def op_cat(peer: Peer, img: Image, s: Session, phase: Phase, work: Path, info: dict) -> float:
    assert img.artifact is not None
    if phase.drop_caches:
        drop_caches()
    return sh(f"cat {shlex.quote(str(peer.file(img, s, img.artifact, img.artifact_layer)))} > /dev/null")[0]


def op_gztail(peer: Peer, img: Image, s: Session, phase: Phase, work: Path, info: dict) -> float:
    """Mount start to the last MiB of the biggest gzip layer's last file read (like `gzip -dc | tail`)."""
    assert img.gz_file is not None
    sh(f"tail -c {TAIL_BYTES} {shlex.quote(str(peer.file(img, s, img.gz_file, img.gz_layer)))} > /dev/null")
    return time.perf_counter() - s.t0


def op_rss(peer: Peer, img: Image, s: Session, phase: Phase, work: Path, info: dict) -> float | None:
    return vm_hwm(s.pid)


OPS: dict[str, Callable[..., float | None]] = {
    "ready": op_ready, "trace": op_trace, "tracel": op_trace_layer, "find1": op_find, "find2": op_find,
    "cat1": op_cat, "cat2": op_cat, "gztail": op_gztail, "rss": op_rss, "findall": op_find_all,
    "statwalk": op_stat_walk}


# ---------------------------------------------------------------- whole commands (no FUSE)

@dataclass
class Command:
    """A command timed as a whole in a fresh empty directory; `check` names the file it must leave there."""

    name: str
    cmd: str
    cold_cache: bool | None = None  # True: empty imgfs's index cache first; False: keep it; None: n/a
    check: str | None = None


def commands(img: Image, imgfs: str | None, seeds: list[str], slow: bool) -> list[Command]:
    """The CLI cases for img, in order (a warm case relies on the cold one before it)."""
    q = shlex.quote(str(img.path))
    cases = [Command("cat IMAGE > /dev/null (raw read speed)", f"cat {q} > /dev/null")]
    name = os.path.basename(img.trace) if img.trace else "no-such-name"  # without trace.log: a full walk
    check = f" | grep -q {img.trace}" if img.trace else " > /dev/null"
    for cold in (True, False) if imgfs else ():
        state = "cold" if cold else "warm"
        cases.append(Command(f"imgfs find IMAGE --name {name} (index {state})",
                             f"{imgfs} find {q} --name {name}{check}", cold))
    if imgfs and img.trace:
        for cold in (True, False):
            state = "cold" if cold else "warm"
            cases.append(Command(f"imgfs cat IMAGE {img.trace} --layer -1 (index {state})",
                                 f"{imgfs} cat {q} {img.trace} --layer -1 > trace.log", cold, "trace.log"))
    # on big.tar.gz the seed scripts gunzip the whole image per tar call (seed_better_lean.sh: ~50 s)
    if img.docker and img.trace and (slow or img.path.suffix == ".tar"):
        for seed in seeds:
            cases.append(Command(seed, f"{SEED_DIR / seed} {q} 2>/dev/null", None, "trace.log"))
    if img.gz_layer is not None:
        blob = shlex.quote(img.layers[img.gz_layer])
        cases.append(Command(f"tar -xOf IMAGE <biggest gzip layer> | gzip -dc | tail -c {TAIL_BYTES}",
                             f"tar -xOf {q} {blob} | gzip -dc | tail -c {TAIL_BYTES} > /dev/null"))
    return cases


def run_command(c: Command, img: Image, work: Path, cache: Path) -> float:
    if c.cold_cache:
        shutil.rmtree(cache, ignore_errors=True)
    cwd = work / "cmd"
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir()
    dt, _ = sh(c.cmd, cwd=cwd, env=imgfs_env(work, cache))
    if c.check and sha256(cwd / c.check) != img.trace_sha256:
        raise RuntimeError(f"{c.name}: wrong {c.check}")
    shutil.rmtree(cwd)  # seed_better.sh leaves 1.9 GB behind
    os.sync()  # and its writeback must not spill into the next timing
    return dt


# ---------------------------------------------------------------- the run

@dataclass
class Results:
    """Raw figures: values[image][column][metric] is one list entry per run."""

    values: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def add(self, image: str, column: str, metric: str, value: float) -> None:
        self.values.setdefault(image, {}).setdefault(column, {}).setdefault(metric, []).append(value)

    def median(self, image: str, column: str, metric: str) -> float | None:
        vals = self.values.get(image, {}).get(column, {}).get(metric)
        return statistics.median(vals) if vals else None


def bench_image(img: Image, peers: list[Peer], cmds: list[Command], runs: int, work: Path, res: Results,
                phases: tuple[Phase, ...]) -> None:
    """Each run times every peer and command once, interleaved so drift hits all columns alike.

    Phases that drop the page cache come last in a run, so they cannot leave the others a cold cache."""
    res.info.setdefault(img.name, {"entries": img.entries, "gz file": img.gz_file})
    for run in range(runs):
        load = Path("/proc/loadavg").read_text()[:14]
        res.info[img.name].setdefault("loadavg per run", []).append(load)
        log(f"{img.name}: run {run + 1}/{runs} (loadavg {load})")
        for peer in peers:
            for phase in phases:
                if not phase.drop_caches:
                    prewarm(img, peer)
                    measure(peer, img, phase, run, work, res)
        prewarm(img, None)
        for c in cmds:
            res.add(img.name, "commands", c.name, run_command(c, img, work, work / "cli-cache"))
            log(f"  {c.name}: {res.values[img.name]['commands'][c.name][-1]:.3f} s")
        for peer in peers:
            for phase in phases:
                if phase.drop_caches:
                    measure(peer, img, phase, run, work, res)


def prewarm(img: Image, peer: Peer | None) -> None:
    """Read the image, or the peer's extracted tree, into the page cache right before a warm-cache phase.

    Once is not enough: this VM pages out page cache untouched for ~60 s (a DAMON pageout scheme)."""
    if isinstance(peer, LocalDisk):
        if img.source in peer.trees:
            sh(f"find {shlex.quote(str(peer.trees[img.source]))} -type f -print0 | xargs -0r cat > /dev/null")
    else:
        sh(f"cat {shlex.quote(str(img.path))} > /dev/null")


def measure(peer: Peer, img: Image, phase: Phase, run: int, work: Path, res: Results) -> None:
    """One phase of one peer, its figures added to res; a failure is logged and skipped, not fatal."""
    t = time.perf_counter()
    try:
        figures = run_phase(peer, img, phase, work, res.info[img.name])
    except Exception as e:  # one broken peer must not cost the other columns their figures
        log(f"  {peer.name} {phase.name} FAILED: {e}")
        res.skipped.append(f"{img.name} {peer.name} {phase.name} run {run + 1}: {e}")
        return
    for metric, value in figures.items():
        res.add(img.name, peer.name, metric, value)
    if "cold.rss" in figures:
        res.add(img.name, peer.name, "cold.bpe", figures["cold.rss"] * MiB / img.entries)
    if figures:
        log(f"  {peer.name} {phase.name}: {fmt_dict(figures)} ({time.perf_counter() - t:.1f} s)")


def fmt_dict(d: dict[str, float]) -> str:
    return ", ".join(f"{k.split('.', 1)[1]} {v:.3f}" for k, v in d.items())


# ---------------------------------------------------------------- report

ROWS = (  # (metric, label); seconds unless the label says otherwise
    ("cold.ready", "mount → `ls MNT` works, cold (no index anywhere)"),
    ("cold.trace", "mount → trace.log copied out of merged/, cold"),
    ("layer.tracel", "mount → trace.log copied out of layers/*strace*/ (the article's `cp`), cold"),
    ("warm.ready", "mount → `ls MNT` works, index kept from the cold mount"),
    ("warm.trace", "mount → trace.log copied out, index kept"),
    ("disk.ready", "mount → `ls MNT` works, cold + page cache dropped"),
    ("disk.trace", "mount → trace.log copied out, cold + page cache dropped"),
    ("whole.findall", "`find MNT | wc -l`, the whole mount, 1st walk"),
    ("cold.find1", "`find TREE | wc -l`, 1st walk"),
    ("stat.statwalk", "`find TREE -printf '%s\\n'` (stats every entry), 1st walk"),
    ("cold.find2", "`find TREE | wc -l`, 2nd walk"),
    ("warm.find1", "`find TREE | wc -l`, 1st walk of a mount with the index kept"),
    ("cold.cat1", "`cat` 1 GiB file > /dev/null, 1st read (fresh mount)"),
    ("cold.cat2", "`cat` 1 GiB file > /dev/null, 2nd read"),
    ("disk.cat1", "`cat` 1 GiB file, 1st read, page cache dropped"),
    ("gz.gztail", "mount → last MiB of the biggest gzip layer's last file, cold"),
    ("gzwarm.gztail", "mount → last MiB of that file, index kept"),
    ("cold.rss", "peak RSS of the mount process (MiB)"),
    ("cold.bpe", "peak RSS per tar entry (bytes)"),
)
MOUNT_RELATIVE = {"ready", "trace", "tracel", "gztail"}  # timed from the mount command; local disk has no mount
TARGETS = {"cold.trace": 0.6, "layer.tracel": 0.6, "cold.find1": 1.0, "cold.find2": 0.2, "cold.cat2": 0.1,
           "cold.cat1": "ratarmount"}
# ratarmount has no merged view: its cold trace.log is already read from the layer, like imgfs's layer.tracel
SAME_AS = {("layer.tracel", "ratarmount"): "cold.trace"}


def fmt(v: float | None, metric: str = "") -> str:
    if v is None:
        return "–"
    if metric.endswith((".rss", ".bpe")):
        return f"{v:.0f}"
    return f"{v:.2f} s" if v >= 10 else f"{v:.3f} s"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


def target_check(res: Results, image: str, metric: str) -> str:
    goal = TARGETS.get(metric)
    first = next((c for c in res.values.get(image, {}) if c.startswith("imgfs")), "imgfs")
    v = res.median(image, first, metric)
    if goal is None or v is None or image != "big":
        return ""
    limit = res.median(image, "ratarmount", metric) if goal == "ratarmount" else goal
    if limit is None:
        return ""
    text = f"≤ {goal}" if goal == "ratarmount" else f"≤ {goal} s"
    return f"{text} {'✓' if v <= limit else '✗ MISSED'}"


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        rows = [[cell.replace("|", "\\|") for cell in r] for r in rows]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) for r in [header, *rows])


def report(res: Results, images: list[Image], markdown: bool) -> str:
    out = []
    for img in images:
        have = res.values.get(img.name, {})
        cols = [c for c in ("imgfs fuse3", "imgfs fuse2", "imgfs", "ratarmount", "local disk") if c in have]
        rows = []
        for metric, label in ROWS:
            vals = [res.median(img.name, c, SAME_AS.get((metric, c), metric)) for c in cols]
            if all(v is None for v in vals):
                continue
            row = [label, *(fmt(v, metric) for v in vals)]
            if cols and cols[0].startswith("imgfs"):
                row += [ratio(vals[0], res.median(img.name, other, SAME_AS.get((metric, other), metric)))
                        if other != "local disk" or metric.split(".")[1] not in MOUNT_RELATIVE else "–"
                        for other in cols[1:]]
                if img.name == "big":
                    row.append(target_check(res, img.name, metric))
            rows.append(row)
        header = ["", *cols]
        if cols and cols[0].startswith("imgfs"):
            header += [f"{cols[0]} ÷ {c}" for c in cols[1:]] + (["issue 3 target"] if img.name == "big" else [])
        if rows:
            out.append(f"### {img.name}: {img.entries} tar entries; mounts\n\n" + table(header, rows, markdown))
        cmd_rows = [[name, fmt(res.median(img.name, "commands", name))]
                    for name in res.values.get(img.name, {}).get("commands", {})]
        if cmd_rows:
            out.append(f"### {img.name}: whole commands\n\n" + table(["command", "time"], cmd_rows, markdown))
        for what in ("find entries", "find-all entries"):
            counts = res.info.get(img.name, {}).get(what)
            if counts:
                out.append(f"{what} counted: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n\n".join(out + [f"skipped: {s}" for s in res.skipped])


def machine() -> dict[str, str]:
    mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "")
    versions = {}
    for tool in ("imgfs", "ratarmount"):
        exe = find_tool(tool)
        if exe:
            r = subprocess.run([exe, "--version"], capture_output=True, text=True)
            versions[tool] = (r.stdout or r.stderr).strip().splitlines()[0] if r.returncode == 0 else "?"
    repo = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
    commit = subprocess.run([*repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if subprocess.run([*repo, "status", "--porcelain", "--", "src"], capture_output=True, text=True).stdout:
        commit += " + uncommitted changes under src/"  # others work in the same tree
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": f"{int(mem) / 2**20:.1f} GiB",
            "kernel": platform.release(), "python": platform.python_version(), "imgfs commit": commit, **versions}


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="runs per figure, the median is reported (default 5)")
    p.add_argument("--quick", action="store_true", help="one run")
    p.add_argument("--images", default="big", help=f"comma-separated, of {', '.join(IMAGES)} (default big)")
    p.add_argument("--imgdir", type=Path, default=DEFAULT_IMGDIR, help="default $BENCH_IMG or %(default)s")
    p.add_argument("--tools", default="imgfs,ratarmount,local,commands",
                   help="comma-separated subset of imgfs, ratarmount, local, commands (default all)")
    p.add_argument("--phases", default=",".join(ph.name for ph in PHASES),
                   help="comma-separated subset of the mount phases (default all)")
    p.add_argument("--fuse", default="3,2", help="imgfs's libfuse versions, each a column (--fuse 3 / --fuse 2): "
                   "comma-separated, '' for imgfs's default (default 3,2)")
    p.add_argument("--slow", action="store_true", help="also run seed_naive.sh (~25 s a run)")
    p.add_argument("--keep-awake", action="store_true",
                   help="keep one core busy at nice 19 while measuring: on an idle VM every FUSE round trip also "
                        "pays the vCPU's wake-up from halt (find over big: 3-4 s idle, 0.65 s awake)")
    p.add_argument("--workdir", type=Path, help="make the scratch dir in here (default: the system temp dir)")
    p.add_argument("--json", type=Path, metavar="OUT", help="save raw figures, machine and command here")
    p.add_argument("--registry", action="store_true",
                   help="run the docker:// benchmark instead (scripts/bench_registry.py; --runs, --imgdir apply)")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown (for docs/PERFORMANCE.md)")
    a = p.parse_args(argv)
    if a.quick:
        a.runs = 1
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.registry:
        import bench_registry  # scripts/ is on sys.path when this script runs

        return bench_registry.main(["--runs", str(args.runs), "--imgdir", str(args.imgdir)])
    facts = json.loads((args.imgdir / "images.json").read_text())
    names = args.images.split(",")
    if unknown := [n for n in names if n not in IMAGES]:
        sys.exit(f"unknown image(s) {unknown}; choose from {list(IMAGES)}")
    tools = set(args.tools.split(","))
    phases = tuple(ph for ph in PHASES if ph.name in args.phases.split(","))
    # a SIGTERM unwinds like Ctrl-C, so the finally below still unmounts and removes the scratch dir
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="imgfs-bench-", dir=args.workdir))
    load0 = Path("/proc/loadavg").read_text()[:14]  # other users of the machine skew the figures
    res = Results()
    spinner: subprocess.Popen | None = None
    try:
        images = [load_image(n, args.imgdir, facts) for n in names]
        peers: list[Peer] = []
        made: list[tuple[Peer, str]] = [(Imgfs(work, v or None), "imgfs") for v in args.fuse.split(",")]
        made += [(Ratarmount(work), "ratarmount"), (LocalDisk(work), "local")]
        for peer, key in made:
            why = peer.available() if key in tools else "not in --tools"
            if why:
                res.skipped.append(f"{peer.name}: {why}")
                log(f"skipping {peer.name}: {why}")
            else:
                peers.append(peer)
        if not can_drop_caches():
            res.skipped.append("page-cache-cold phase (cannot write /proc/sys/vm/drop_caches)")
            phases = tuple(ph for ph in phases if not ph.drop_caches)
        imgfs_cli = find_tool("imgfs")
        seeds = ["seed_better_lean.sh", "seed_better.sh"] + (["seed_naive.sh"] if args.slow else [])
        if imgfs_cli:
            warm_up_imgfs(imgfs_cli, peers, images[0], work)
        started = time.perf_counter()
        if args.keep_awake:
            spinner = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])
        for img in images:
            cmds = commands(img, imgfs_cli, seeds, args.slow) if "commands" in tools else []
            bench_image(img, peers, cmds, args.runs, work, res, phases)
        log(f"done in {time.perf_counter() - started:.0f} s")
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
        for mnt in mounts_under(work):
            unmount(mnt)
        if mounts_under(work):
            log(f"mounts remain under {work}; not removing it")
        else:
            shutil.rmtree(work, ignore_errors=True)
    used = sys.argv[1:] if argv is None else argv
    about = dict(machine(), command=" ".join(["scripts/bench.py", *map(shlex.quote, used)]), runs=str(args.runs),
                 keep_awake=str(args.keep_awake),
                 loadavg=f"{load0} at start, {Path('/proc/loadavg').read_text()[:14]} at end")
    if args.json:
        args.json.write_text(json.dumps({"about": about, "values": res.values, "info": res.info,
                                         "skipped": res.skipped}, indent=1))
    if args.markdown:
        print("\n".join(f"- {k}: {v}" for k, v in about.items()) + "\n")
    print(report(res, images, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
