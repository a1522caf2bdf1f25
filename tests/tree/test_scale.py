"""Size and shape limits: 100,000 members, a 100,000-deep path, symlinks that would build one; time and memory."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from array import array
from pathlib import Path

import pytest

import imgfs
from imgfs.errors import FormatError
from imgfs.tarindex import FileSource, MemberIndex, scan
from imgfs.tree import MAX_LAYERS, Tree, merged_tree
from tarmaker import END, ArchiveBuilder, D, F, S, header, index_of, member, merge, pax, tar_of

N = 100_000  # a million is the real-world worst case, too slow for CI: this is the same code at a tenth
TESTS = Path(__file__).resolve().parent.parent


def _many_empty_files(n: int) -> bytes:
    """`n` empty files in n/1000 directories, headers patched from one template (fast to build)."""
    tmpl = header(b"x")
    base_sum = sum(tmpl) - sum(tmpl[148:156]) + 8 * 32 - ord("x")
    out = []
    for i in range(n):
        name = b"d%03d/f%06d" % (i // 1000, i)
        chk = b"%06o\0 " % (base_sum + sum(name))
        out.append(name + tmpl[len(name):148] + chk + tmpl[156:])
    return b"".join(out) + END


def _array_bytes(obj: object) -> int:
    """Bytes held by an object's arrays and byte strings (tracemalloc would slow the scan tenfold)."""
    fields = vars(obj) if hasattr(obj, "__dict__") else {k: getattr(obj, k) for k in obj.__slots__}
    return sum(sys.getsizeof(v) for v in fields.values() if isinstance(v, array | bytes | bytearray))


def _index_bytes(idx: MemberIndex) -> int:
    """Memory held by an index: its arrays, and its names' arrays, blob and directory strings."""
    names = idx.names
    return (_array_bytes(idx) + _array_bytes(names) + sys.getsizeof(names.blob)
            + sys.getsizeof(names.dirs) + sum(sys.getsizeof(d) for d in names.dirs))


def _tree_bytes(tree: Tree) -> int:
    """Memory of a tree's own structures: its arrays and the names of implied directories."""
    return _array_bytes(tree) + sys.getsizeof(tree.extra) + sum(sys.getsizeof(n) for n in tree.extra)


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tar of 100,000 empty files on disk."""
    path = tmp_path_factory.mktemp("scale") / "many.tar"
    path.write_bytes(_many_empty_files(N))
    return path


def test_100k_members_scan_and_merge(many: Path) -> None:
    src = FileSource(many)
    try:
        t0 = time.perf_counter()
        idx = scan(src)
        t1 = time.perf_counter()
        tree, _ = merged_tree([idx], [src])
        t2 = time.perf_counter()
    finally:
        src.close()
    assert len(idx) == N and idx.error is None
    assert len(tree.listdir("d042")) == 1000 and tree.entry("d099/f099999").size == 0
    # Linear work: about 10 us a member to scan and 3 to merge here; the bounds leave room for a slow CI
    # machine and still catch anything quadratic (that would take hours).
    assert t1 - t0 < 30 and t2 - t1 < 15, (t1 - t0, t2 - t1)
    per_member = _index_bytes(idx) / N
    assert per_member < 80, per_member  # 49 bytes of arrays, 8 of name arrays (+1/8 spare), 7 of name text
    per_node = _tree_bytes(tree) / len(tree)
    assert per_node < 48, per_node  # 28 bytes of arrays and 4 for each of ~2.6 hash slots


def test_one_path_written_over_and_over_merges_in_linear_time() -> None:
    # A hostile tar can hold one path 50,000 times, or flip it between file and directory: each rewrite
    # must take over the old node's slot, not lengthen a probe chain (that was minutes, quadratic).
    n = 25_000
    members = [F("etc/x", b"%d" % k) for k in range(n)]
    members += [D("flip") if k % 2 else F("flip", b"f") for k in range(n)] + [F("flip/in", b"in")]
    data = tar_of(members)  # (tarfile alone takes seconds on a busy machine: not timed)
    t0 = time.perf_counter()
    tree = merge(data)
    assert time.perf_counter() - t0 < 10  # ~0.3 s here; quadratic took minutes
    assert b"".join(tree.read_all(tree.file("etc/x"))) == b"%d" % (n - 1)
    assert tree.listdir("flip") == [b"in"] and len(tree) == 5  # root, etc, etc/x, flip, flip/in


def test_100000_deep_path_is_cheap() -> None:
    deep = b"a/" * 100_000 + b"f"
    data = pax({b"path": deep}) + header(b"short") + pax({b"path": b"ok/file"}) + header(b"x") + END
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        idx = index_of(data)
        tree = merge(data)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5 and peak < 64 << 20, (elapsed, peak)
    assert tree.lookup("ok/file") is not None
    if deep not in idx.names:
        assert idx.skipped  # refused (longer than PATH_MAX) and said so
    assert max(len(p) for p, _ in tree.walk()) <= len(deep)


def test_deep_chain_of_directory_members() -> None:
    # 2,000 nested directories, each member name within PATH_MAX: built without quadratic cost.
    names = ["/".join(["d"] * k) for k in range(1, 2001)]
    t0 = time.perf_counter()
    tree = merge([D(n, mode=0o700) for n in names] + [F(names[-1] + "/leaf", b"x")])
    assert time.perf_counter() - t0 < 5
    assert tree.lookup(names[-1] + "/leaf") is not None
    assert tree.entry(names[1000]).mode == 0o700 and len(tree) == 2002


_SYMLINK_BLOWUP = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
sys.path.insert(0, sys.argv[1])
from tarmaker import D, F, S, merge
if sys.argv[2] == "long-target":
    lower = [S("lib", "a/" * 100_000)]
else:  # every target short (< PATH_MAX), but 39 hops add up to about 74,000 components
    lower = [S(f"l{k}", f"l{k + 1}/" + "a/" * 1900) for k in range(39)] + [D("l39")]
tree = merge(lower, [F(("lib" if sys.argv[2] == "long-target" else "l0") + "/x", b"x")])
assert max(len(p) for p, _ in tree.walk()) <= 4096, "a path longer than PATH_MAX was built"
print("ok")
"""


@pytest.mark.parametrize("shape", ["long-target", "hop-chain"])
def test_symlinked_parent_cannot_build_a_huge_path(shape: str) -> None:
    # In a child process with a 1.5 GiB address-space limit: the failure mode is exhausting the machine.
    proc = subprocess.run([sys.executable, "-c", _SYMLINK_BLOWUP, str(TESTS), shape], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-400:]


def test_symlink_cycle_resolve_terminates_quickly() -> None:
    links = [S(f"l{k}", f"l{(k + 1) % 50}") for k in range(50)] + [S("self", "self/self")]
    tree = merge(links)
    t0 = time.perf_counter()
    assert tree.resolve("l0") is None and tree.resolve("self/x") is None
    assert tree.resolve("l7", follow_last=False) == b"l7"
    assert time.perf_counter() - t0 < 1


_MANY_LAYERS = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import imgfs
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]) << 20, int(sys.argv[3]) << 20))
with imgfs.open_archive(sys.argv[2], use_cache=False) as a:
    img = a.images[0]
    trees = [img.layer_tree(la.position) for la in img.layers]
    assert img.merged().lookup("f%d" % (len(trees) - 1)) is not None
    assert all(t.lookup("f%d" % k) is not None for k, t in enumerate(trees))
print("ok")
"""


def _layered_archive(path: Path, n: int) -> Path:
    """An OCI archive of one image with `n` layers, layer k holding the one file f<k>."""
    b = ArchiveBuilder()
    b.oci_index([b.oci_image([member(b"f%d" % k, b"x") + END for k in range(n)])])
    return Path(b.save(path))


def test_many_layers_cost_memory_linear_in_their_count(tmp_path: Path) -> None:
    # Every layer tree once held a list of all the layers: 3000 layers took 1.5 GB; now ~50 MB. The child
    # has 400 MiB of address space, imports included.
    path = _layered_archive(tmp_path / "layers.tar", 3000)
    proc = subprocess.run([sys.executable, "-c", _MANY_LAYERS, str(TESTS), str(path), "400"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-400:]


def test_an_image_past_the_layer_limit_is_refused_clearly(tmp_path: Path) -> None:
    with imgfs.open_archive(_layered_archive(tmp_path / "too-many.tar", MAX_LAYERS + 1), use_cache=False) as a:
        img = a.images[0]
        for build in (img.merged, lambda: img.layer_tree(0)):
            with pytest.raises(FormatError, match=f"{MAX_LAYERS + 1} layers, more than imgfs supports"):
                build()
