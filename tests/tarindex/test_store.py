"""The persisted cache: round trips, corrupt and foreign files, bounds, unwritable dirs, concurrent fillers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import imgfs
from conftest import IMAGES
from imgfs.tarindex import FileSource, scan
from imgfs.tarindex.store import MAGIC, CacheDamage, Store, dump_index, load_index, looks_right
from truthlib import listing_from_tree

SEED = IMAGES / "seed.docker-oci.tar"
META = IMAGES / "meta.skopeo-oci-gzip.tar"


def _listing(path: Path, **kw) -> dict:
    with imgfs.open_archive(path, **kw) as a:
        return listing_from_tree(a.image().merged())


def test_index_round_trip_keeps_every_field() -> None:
    with imgfs.open_archive(IMAGES / "meta.docker-oci.tar", use_cache=False) as a:
        for layer in a.image().layers:
            idx = layer.index()
            back, size = load_index(dump_index(idx, 12345))
            assert size == 12345
            for field in ("names", "kinds", "modes", "uids", "gids", "sizes", "mtimes", "offsets", "links",
                          "devices", "xattrs", "broken", "mtime_frac", "error", "skipped", "end"):
                assert getattr(back, field) == getattr(idx, field), field


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign-version", "empty", "short"])
def test_damaged_cache_files_are_rebuilt_with_one_warning(tmp_path: Path, damage: str) -> None:
    shutil.copy(SEED, tmp_path / "seed.tar")
    cache = tmp_path / "cache"
    want = _listing(tmp_path / "seed.tar", use_cache=False)
    assert _listing(tmp_path / "seed.tar", cache_dir=cache) == want
    files = sorted(p for kind in ("idx", "shared", "ptr") for p in (cache / "v1" / kind).glob("*"))
    assert files
    for f in files:
        data = f.read_bytes()
        f.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)),
                       "foreign-version": b"IMGFSIX9" + data[8:], "empty": b"", "short": data[:12]}[damage])
    warnings: list[str] = []
    assert _listing(tmp_path / "seed.tar", cache_dir=cache, warn=warnings.append) == want
    assert 1 <= len(warnings) <= len(files) and all("rebuilding" in w for w in warnings)
    warnings.clear()
    assert _listing(tmp_path / "seed.tar", cache_dir=cache, warn=warnings.append) == want
    assert warnings == []  # rebuilt files are good again


def test_index_files_of_an_earlier_format_are_rebuilt_without_a_warning(tmp_path: Path) -> None:
    shutil.copy(SEED, tmp_path / "seed.tar")
    cache = tmp_path / "cache"
    want = _listing(tmp_path / "seed.tar", cache_dir=cache)
    files = sorted(p for kind in ("idx", "shared") for p in (cache / "v1" / kind).glob("*.idx"))
    assert files
    for f in files:  # what imgfs 0.x wrote: format 1 (names as one NUL-separated block)
        f.write_bytes(b"IMGFSIX1" + f.read_bytes()[8:])
    warnings: list[str] = []
    assert _listing(tmp_path / "seed.tar", cache_dir=cache, warn=warnings.append) == want
    assert warnings == []
    assert all(MAGIC in f.read_bytes()[:64] for f in files if f.exists())  # written again in this format


def test_an_index_that_does_not_fit_the_stream_is_refused() -> None:
    with imgfs.open_archive(SEED, use_cache=False) as a:
        layers = a.image().layers
        idx, other = layers[0].index(), layers[-1]
        assert not looks_right(idx, other.source(), layers[0].source().size)
        assert looks_right(idx, layers[0].source(), layers[0].source().size)
        assert not looks_right(idx, layers[0].source(), layers[0].source().size + 512)


def test_unwritable_cache_works_without_it_and_says_so_once(tmp_path: Path) -> None:
    cache = tmp_path / "ro-cache"
    cache.write_text("a file where the cache directory should be")  # unwritable for any user, root too
    warnings: list[str] = []
    got = _listing(META, cache_dir=cache, warn=warnings.append)
    assert got == _listing(META, use_cache=False)
    assert len([w for w in warnings if "cannot be written" in w]) == 1


def test_full_disk_is_like_an_unwritable_cache(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    store = Store(tmp_path / "c", warn=(warnings := []).append)
    (tmp_path / "c").mkdir()
    def to_full_disk(fh: object) -> None:  # writing into /dev/full fails with ENOSPC, as a full filesystem does
        with open("/dev/full", "wb") as full:
            full.write(b"x" * 65536)

    assert store.write_with("idx", "k", ".idx", to_full_disk) is False
    assert store.write_with("idx", "k2", ".idx", lambda fh: fh.write(b"x")) is False  # off after the first failure
    assert len(warnings) == 1 and "No space" in warnings[0]
    assert list((tmp_path / "c").rglob("*.idx")) == [] and list((tmp_path / "c").rglob(".tmp-*")) == []


def test_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    store = Store(tmp_path, max_bytes=16_000)
    for n in range(5):
        store.write("idx", f"k{n}", ".idx", bytes(3000))
        os.utime(store.path("idx", f"k{n}", ".idx"), (1000 + n, 1000 + n))
    store.read("idx", "k1", ".idx")  # used just now: survives
    store.write("idx", "k5", ".idx", bytes(3000))
    left = {p.name for p, _, _ in store.files()}
    assert sum(s for _, s, _ in store.files()) <= 16_000 * 9 // 10
    assert {store.path("idx", k, ".idx").name for k in ("k1", "k3", "k4", "k5")} == left
    assert store.clear() > 0 and store.files() == []


_FILL = """
import sys, imgfs
from truthlib import listing_from_tree
with imgfs.open_archive(sys.argv[1], cache_dir=sys.argv[2]) as a:
    l = listing_from_tree(a.image().merged())
print(len(l))
"""


def test_two_processes_filling_one_cache_at_once(tmp_path: Path) -> None:
    archives = []
    for n in range(2):
        shutil.copy(META, tmp_path / f"m{n}.tar")
        archives.append(tmp_path / f"m{n}.tar")
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), *sys.path]))
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-c", _FILL, str(archives[n % 2]), str(cache)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(4)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-300:] for o in outs]
        assert len({o[0] for o in outs}) == 1
    assert list(cache.rglob(".tmp-*")) == []
    want = _listing(META, use_cache=False)
    assert all(_listing(a, cache_dir=cache) == want for a in archives)


def test_scan_of_a_cached_spool_is_the_same(tmp_path: Path) -> None:
    with imgfs.open_archive(IMAGES / "seed.skopeo-oci-zstd.tar", cache_dir=tmp_path) as a:
        layer = a.image().layers[-1]
        names = list(layer.index().names)
    spools = list(tmp_path.rglob("*.tar"))
    assert spools, "zstd layers are decompressed into the cache"
    assert any(list(scan(FileSource(p)).names) == names for p in spools)


def _snapshot(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["v1", "v1/idx"])
def test_a_symlink_in_the_cache_is_never_followed_to_read_write_or_delete(tmp_path: Path, where: str) -> None:
    victim = tmp_path / "victim"
    for kind in ("", "idx", "shared", "ptr"):
        (victim / kind).mkdir(parents=True, exist_ok=True)
        for n in range(3):
            (victim / kind / f"file{n}.idx").write_bytes(b"precious %d" % n)
    before = _snapshot(victim)
    cache = tmp_path / "cache"
    link = cache / where
    link.parent.mkdir(parents=True)
    link.symlink_to(victim if where == "v1" else victim / "idx")
    warnings: list[str] = []
    store = Store(cache, max_bytes=1, warn=warnings.append)  # every write is over the bound: it evicts
    store.write("idx", "k", ".idx", b"x" * 100)
    store.evict()
    assert store.read("idx", "k", ".idx") is None
    store.clear()
    assert _snapshot(victim) == before
    assert link.is_symlink() or not link.exists()  # at most the link itself is gone
    assert len(warnings) <= 1 and all("cannot be written" in w for w in warnings)


def test_a_cache_file_linked_elsewhere_is_removed_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    store = Store(tmp_path / "cache")
    store.write("idx", "k", ".idx", b"data")
    p = store.path("idx", "k", ".idx")
    p.unlink()
    p.symlink_to(victim)
    with pytest.raises(CacheDamage):
        store.read("idx", "k", ".idx")
    assert store.files() == []  # a link is no cache file
    store.clear()
    assert victim.read_bytes() == b"precious" and not p.is_symlink()


@pytest.mark.parametrize("plant", ["fifo", "dev-zero", "huge"])
def test_special_or_huge_cache_files_are_rebuilt_without_hanging(tmp_path: Path, plant: str) -> None:
    shutil.copy(SEED, tmp_path / "seed.tar")
    cache = tmp_path / "cache"
    want = _listing(tmp_path / "seed.tar", use_cache=False)
    assert _listing(tmp_path / "seed.tar", cache_dir=cache) == want
    files = sorted(p for kind in ("shared", "ptr") for p in (cache / "v1" / kind).glob("*"))
    assert files
    for f in files:
        f.unlink()
        if plant == "fifo":
            os.mkfifo(f)  # an open for reading would block until a writer comes: forever
        elif plant == "dev-zero":
            f.symlink_to("/dev/zero")  # endless zeros
        else:
            with open(f, "wb") as fh:
                fh.truncate(64 << 30)  # sparse: 64 GiB of zeros, past any bound
    warnings: list[str] = []
    got: list[dict] = []
    t = threading.Thread(target=lambda: got.append(_listing(tmp_path / "seed.tar", cache_dir=cache,
                                                            warn=warnings.append)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "reading the cache hangs"
    assert got == [want]
    assert warnings and all("rebuilding" in w for w in warnings)
    assert all(f.is_file() and f.stat().st_size < 1 << 20 for f in files)  # rebuilt as regular files


def test_warn_once_says_each_message_once(tmp_path: Path) -> None:
    warnings: list[str] = []
    store = Store(tmp_path, warn=warnings.append)
    for _ in range(3):
        store.warn_once("a")
        store.warn_once("b")
    assert warnings == ["a", "b"]
