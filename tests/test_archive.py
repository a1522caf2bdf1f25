"""Every fixture archive against its ground truth: merged trees, raw layer members, layer names, image selection."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import platform
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

import imgfs
from conftest import IMAGES, TRUTH, archives, truth_index
from imgfs import Archive, Image
from imgfs.errors import SelectionError
from imgfs.tarindex import meta_digest
from tarmaker import ArchiveBuilder, F, config_for, digest_of, tar_of
from truthlib import diff, listing_from_tree, load_truth

ARCHIVES = archives()
_OPEN: dict[str, Archive] = {}


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Archive]]:
    """Archives opened once for the module, with a private index cache (never the user's)."""
    cache = tmp_path_factory.mktemp("cache")
    _OPEN["__cache__"] = cache  # type: ignore[assignment]
    yield _OPEN
    for a in list(_OPEN.values()):
        if isinstance(a, Archive):
            a.close()
    _OPEN.clear()


def get(opened: dict[str, Archive], name: str) -> Archive:
    """The archive `name`, opened once (cold cache)."""
    if name not in opened:
        opened[name] = imgfs.open_archive(IMAGES / name, cache_dir=opened["__cache__"], warn=lambda m: None)
    return opened[name]


def image_for(a: Archive, entry: dict) -> Image:
    """The imgfs image that an INDEX.json / layers-truth entry describes (by manifest position or digest)."""
    if entry["source"] == "manifest.json":
        return a.images[entry["manifest_index"]]
    hits = [i for i in a.images if i.digest == entry["manifest_digest"]]
    assert len(hits) == 1, f"manifest {entry['manifest_digest']}: {len(hits)} images in imgfs"
    return hits[0]


def layers_truth(name: str) -> list[dict]:
    """The per-layer truth records of an archive."""
    path = TRUTH / truth_index()[name]["layers_truth"]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def truth_name(m: dict, key: str = "name") -> bytes:
    """A raw member name from the truth, cleaned as rule 18 says ('./', '/' prefixes, trailing '/')."""
    raw = base64.b64decode(m[key + "_b64"]) if key + "_b64" in m else m[key].encode()
    while raw.startswith(b"./"):
        raw = raw[2:]
    raw = raw.strip(b"/")
    return b"" if raw == b"." else raw


# -- (a) merged trees --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ARCHIVES)
def test_merged_tree_equals_umoci_rootfs(opened: dict[str, Archive], name: str, index: dict) -> None:
    a = get(opened, name)
    for entry in index[name]["images"]:
        img = image_for(a, entry)
        assert [la.diff_id for la in img.layers] == entry["diff_ids"]
        want = load_truth(entry["rootfs_truth"][0])
        got = listing_from_tree(img.merged())
        problems = diff(want, got)
        assert not problems, f"{name} {img.label}: {len(problems)} differences\n" + "\n".join(problems[:15])


@pytest.mark.parametrize("name", ["seed.docker-oci.tar.gz", "whiteout.skopeo-oci-gzip.tar", "links.skopeo-oci-zstd.tar",
                                  "meta.docker-legacy.tar"])
def test_warm_cache_gives_the_same_tree(opened: dict[str, Archive], name: str, index: dict) -> None:
    # The second open reads member indexes, seek points and spools from the cache the first one wrote.
    cold = get(opened, name)
    for img in cold.images:
        img.merged()
    with imgfs.open_archive(IMAGES / name, cache_dir=opened["__cache__"], warn=lambda m: None) as warm:
        for entry in index[name]["images"]:
            problems = diff(load_truth(entry["rootfs_truth"][0]), listing_from_tree(image_for(warm, entry).merged()))
            assert not problems, "\n".join(problems[:15])


# -- (b) raw layer members -----------------------------------------------------------------------------
def _member_records(layer: imgfs.Layer) -> list[dict]:
    """imgfs's view of a layer's members in the truth schema, content hashed through the source."""
    idx = layer.index()
    src = layer.source()
    out = []
    for i in range(len(idx)):
        kind = idx.kind_name(i)
        r = {"name": idx.names[i], "type": kind, "size": idx.sizes[i], "mode": f"{idx.modes[i]:04o}",
             "uid": idx.uids[i], "gid": idx.gids[i], "mtime": int(idx.mtime(i))}
        if kind in ("hardlink", "symlink"):
            r["linkname"] = idx.links[i]
        if kind in ("char", "block"):
            r["devmajor"], r["devminor"] = idx.devices[i]
        if i in idx.xattrs:
            r["xattrs"] = {k: base64.b64encode(v).decode() for k, v in idx.xattrs[i].items()}
        if kind == "file":
            h = hashlib.sha256()
            off, end = idx.offsets[i], idx.offsets[i] + idx.sizes[i]
            while off < end:
                chunk = src.pread(off, min(1 << 20, end - off))
                h.update(chunk)
                off += len(chunk)
            r["sha256"] = h.hexdigest()
        out.append(r)
    return out


def _truth_records(members: list[dict]) -> list[dict]:
    """The truth's members in the same shape (names cleaned, raw bytes where the truth has base64)."""
    out = []
    for m in members:
        r = {"name": truth_name(m), "type": m["type"], "size": m["size"], "mode": m["mode"], "uid": m["uid"],
             "gid": m["gid"], "mtime": m["mtime"]}
        if "linkname" in m:
            r["linkname"] = base64.b64decode(m["linkname_b64"]) if "linkname_b64" in m else m["linkname"].encode()
        for k in ("devmajor", "devminor", "xattrs", "sha256"):
            if k in m:
                r[k] = m[k]
        out.append(r)
    return out


@pytest.mark.parametrize("name", ARCHIVES)
def test_layer_members_equal_the_truth(opened: dict[str, Archive], name: str) -> None:
    a = get(opened, name)
    records = layers_truth(name)
    assert records
    sources = {r["source"] for r in records}
    if truth_index()[name]["format"] == "docker-oci":
        assert sources == {"manifest.json", "oci-index"}  # both views are checked against the same imgfs images
    for r in records:
        img = image_for(a, r)
        assert len(img.layers) == r["layer_count"]
        layer = img.layers[r["layer_index"]]
        where = f"{name} {r['source']} {img.label} layer {r['layer_index'] + 1}"
        assert layer.member == r["archive_member"], where
        assert layer.diff_id == r["diff_id"], where
        assert (layer.compression or "none") == r["compression"], where  # from magic bytes (skopeo's mislabel)
        assert layer.created_by == r["created_by"], where  # rule 1: empty_layer entries take no layer
        got, want = _member_records(layer), _truth_records(r["members"])
        assert len(got) == len(want), where
        bad = [(g, w) for g, w in zip(got, want, strict=True) if g != w]
        assert not bad, f"{where}: {len(bad)} members differ, first: {bad[0]}"
        assert layer.index().error is None and not layer.index().broken


@pytest.mark.parametrize("name", ["seed.docker-legacy.tar", "whiteout.docker-oci.tar", "seed.skopeo-oci-zstd.tar",
                                  "links.docker-legacy.tar", "meta.skopeo-oci-gzip.tar"])
def test_layer_tree_holds_the_layer_members(opened: dict[str, Archive], name: str) -> None:
    # The per-layer view shows each member (markers too, rule 12); nothing else except implied parents; a hard
    # link reads as the content its target has in the layer's own truth record.
    for r in layers_truth(name):
        if r["source"] != "manifest.json" and any(x["source"] == "manifest.json" for x in layers_truth(name)):
            continue
        layer = image_for(get(opened, name), r).layers[r["layer_index"]]
        names = set(layer.index().names)
        tree = layer.tree()
        paths = {p for p, _ in tree.walk()}
        assert names <= paths, sorted(names - paths)[:5]
        extra = [p for p in paths - names if tree.lookup(p) is not None and tree.lookup(p) >= 0]
        assert not extra, extra[:5]
        sums = {truth_name(m): m["sha256"] for m in r["members"] if m["type"] == "file"}
        for m in r["members"]:
            if m["type"] == "hardlink":
                got = hashlib.sha256(b"".join(tree.read_all(tree.lookup(truth_name(m))))).hexdigest()
                assert got == sums[truth_name(m, "linkname")], m


# -- (c) layer names -------------------------------------------------------------------------------------
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{2,}")
_HEX = re.compile(r"^[0-9a-f]{12,}$")


def _tokens(text: str) -> set[str]:
    """Distinctive words of a command; long hex digests count by their first 8 digits (names shorten them)."""
    words = set()
    for w in _TOKEN.findall(text.replace("\u2215", "/")):
        words.add(w[:8] if _HEX.match(w) else w)
    return words - {"nop", "buildkit"}


def _history_sources(image_json: str) -> list[str]:
    """Per layer, the text a name should come from: created_by, else comment (rule 1 applied here)."""
    cfg = json.loads((TRUTH / image_json).read_text())["config"]
    entries = [h for h in cfg.get("history", []) if not h.get("empty_layer")]
    return [h.get("created_by") or h.get("comment") or "" for h in entries]


def _valid_file_name(n: str) -> bool:
    """Whether `n` can be a directory entry: 1-255 bytes, no '/', no NUL, not '.' or '..'."""
    raw = n.encode("utf-8")
    return 0 < len(raw) <= 255 and b"/" not in raw and b"\0" not in raw and n not in (".", "..")


@pytest.mark.parametrize("name", ARCHIVES)
def test_layer_names_follow_their_history(opened: dict[str, Archive], name: str, index: dict) -> None:
    a = get(opened, name)
    for entry in index[name]["images"]:
        img = image_for(a, entry)
        n = len(img.layers)
        width = len(str(n))
        names = [la.name for la in img.layers]
        assert len(set(names)) == n
        srcs = _history_sources(entry["image_config_truth"][0])
        assert len(srcs) == n
        for pos, (layer, src) in enumerate(zip(img.layers, srcs, strict=True)):
            assert _valid_file_name(layer.name), layer.name
            assert re.match(rf"^{pos + 1:0{width}d}( |$)", layer.name), layer.name
            # The name comes from this layer's history entry: every word in it is a word of that entry (a name
            # cut at 255 bytes may end in half a word; 'RUN' may be added to a bare shell command), and it shows a
            # word no other entry has, if there is one.
            words = layer.name.split(" ", 1)[1] if " " in layer.name else ""
            if len(layer.name.encode()) > 240:
                words = words.rsplit(" ", 1)[0]
            assert _tokens(words) <= _tokens(src) | {"RUN"}, (layer.name, src)
            own = _tokens(src) - set().union(*(_tokens(o) for o in srcs if o != src))
            assert not own or _tokens(words) & own, (layer.name, src)


@pytest.mark.parametrize("name", [n for n in ARCHIVES if n.startswith(("seed.", "seed-classic.", "seed-buildah."))])
def test_the_trace_log_layer_is_named_after_it(opened: dict[str, Archive], name: str) -> None:
    for img in get(opened, name).images:
        tracing = [la for la in img.layers if la.created_by and "trace.log" in la.created_by]
        assert len(tracing) == 1
        assert "trace.log" in tracing[0].name
        assert [la for la in img.layers if "trace.log" in la.name] == tracing


# -- (d) image selection -----------------------------------------------------------------------------------
def _host() -> str:
    """This machine's architecture in OCI spelling (amd64, arm64, ...)."""
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


@pytest.mark.parametrize("name", ARCHIVES)
def test_every_image_is_reachable_by_its_names(opened: dict[str, Archive], name: str, index: dict) -> None:
    a = get(opened, name)
    info = index[name]
    by_manifest = [e for e in info["images"] if e["source"] == "manifest.json"]
    expected_count = len(by_manifest) if by_manifest else len(info["images"])
    assert len(a.images) == expected_count
    for entry in info["images"]:
        img = image_for(a, entry)
        for tag in entry.get("repo_tags") or []:
            assert a.image(tag) is img
            short = tag.rsplit("/", 1)[-1]  # docker.io/library/seed:latest is also seed:latest
            assert a.image(short) is img
            if short.endswith(":latest"):
                assert a.image(short.removesuffix(":latest")) is img
        if entry.get("ref_name") and not by_manifest:
            # In OCI archives the ref name is the only name (docker-oci ones are tag-only, ambiguous: quirk 1).
            assert img in a.select(entry["ref_name"], platform=img.platform)
        cfg_hex = (entry.get("config_digest") or "").removeprefix("sha256:") or Path(entry["config"]).name.split(".")[0]
        assert img.config_digest == "sha256:" + cfg_hex
        assert a.image(cfg_hex[:12]) is img or len(a.images) > 1 and img in a.select(cfg_hex[:12])
        if entry.get("manifest_digest"):
            assert img.digest == entry["manifest_digest"]
    if expected_count == 1:
        assert a.image().digest == a.images[0].digest


def test_multi_image_archives_need_a_choice(opened: dict[str, Archive]) -> None:
    for name in ("multi.docker-legacy.tar", "multi.docker-oci.tar"):
        a = get(opened, name)
        assert len(a.images) == 3
        with pytest.raises(SelectionError):
            a.image()
        labels = {a.image(t).config_digest for t in ("seed", "whiteout:latest", "example.com/corpus/links:1.0")}
        assert len(labels) == 3
        with pytest.raises(SelectionError):
            a.image("nosuch:tag")


def test_oci_index_platforms(opened: dict[str, Archive], index: dict) -> None:
    name = "seed.oci-index.tar"
    a = get(opened, name)
    plats = {}
    for e in index[name]["images"]:
        p = e["platform"]
        plats["/".join(filter(None, (p["os"], p["architecture"], p.get("variant"))))] = e
    assert sorted(i.platform for i in a.images) == sorted(plats)
    for plat, e in plats.items():
        assert a.image(platform=plat).digest == e["manifest_digest"]
    assert a.image(platform="linux/arm64").digest == plats["linux/arm64/v8"]["manifest_digest"]
    host = f"linux/{_host()}"
    if host in plats:
        assert a.image().digest == plats[host]["manifest_digest"]  # the default is the host's platform
    else:
        with pytest.raises(SelectionError):
            a.image()
    with pytest.raises(SelectionError):
        a.image(platform="linux/s390x")
    amd, arm = a.image(platform="linux/amd64"), a.image(platform="linux/arm64/v8")
    assert len(arm.layers) == len(amd.layers) + 1  # `buildah commit` added one layer
    assert [la.diff_id for la in arm.layers[:-1]] == [la.diff_id for la in amd.layers]  # shared blobs


@pytest.mark.parametrize("name", ARCHIVES)
def test_archive_kind(opened: dict[str, Archive], name: str, index: dict) -> None:
    fmt = index[name]["format"]
    want = {"docker-legacy": "docker-archive", "podman-docker": "docker-archive", "docker-oci": "docker-oci"}.get(
        fmt, "oci-archive")
    if name.endswith(".gz"):
        want += "+gzip"
    assert get(opened, name).kind == want


# -- the persisted cache: one archive must never change what another one shows ------------------------------
def _tree_files(path: Path, **kw: object) -> dict[bytes, bytes]:
    """Path -> content of every regular file in the archive's merged tree."""
    with imgfs.open_archive(path, **kw) as a:
        tree = a.image().merged()
        return {p: b"".join(tree.read_all(r)) for p, r in tree.walk() if tree.entry_for(p, r).kind == "file"}


def _both_claiming_good(tmp_path: Path, good: bytes, evil: bytes) -> dict[str, Path]:
    """Two one-layer archives, "good" and "evil", whose configs both claim the good layer's diff_id."""
    paths = {}
    for name, layer in (("evil", evil), ("good", good)):
        b = ArchiveBuilder()
        b.oci_index([b.oci_image([layer], config=config_for([good]))])
        paths[name] = Path(b.save(tmp_path / f"{name}.tar"))
    return paths


def test_index_cache_is_not_poisoned_by_a_lying_archive(tmp_path: Path) -> None:
    good = tar_of([F("a", b"1"), F("good-name", b"2"), F("z", b"3")])
    evil = tar_of([F("a", b"1"), F("evil-name", b"2"), F("z", b"3")])  # same size, same first and last member
    paths = _both_claiming_good(tmp_path, good, evil)
    cache = tmp_path / "cache"
    _tree_files(paths["evil"], cache_dir=cache)
    assert _tree_files(paths["good"], cache_dir=cache) == _tree_files(paths["good"], use_cache=False)


def test_zstd_spool_cache_is_not_poisoned_by_a_lying_archive(tmp_path: Path) -> None:

    from tarmaker import ArchiveBuilder, F, config_for, tar_of

    good = tar_of([F("a", b"1"), F("b", b"2")])
    blobs = {"good": zstandard.ZstdCompressor().compress(good),
             "evil": zstandard.ZstdCompressor().compress(tar_of([F("a", b"X"), F("b", b"Y")]))}
    claimed = digest_of(blobs["good"])
    paths = {}
    for name, blob in blobs.items():
        b = ArchiveBuilder()
        cfg = b.blob(config_for([good]))
        b.members["blobs/sha256/" + claimed.split(":")[1]] = blob  # the evil archive stores its blob under the
        b.oci_index([b.blob({"schemaVersion": 2, "config": cfg,  # good blob's digest
                             "layers": [{"digest": claimed, "size": len(blobs["good"])}]})])
        paths[name] = b.save(tmp_path / f"{name}.tar")
    cache = tmp_path / "cache"
    assert _tree_files(paths["evil"], cache_dir=cache) == {b"a": b"X", b"b": b"Y"}
    assert _tree_files(paths["good"], cache_dir=cache) == {b"a": b"1", b"b": b"2"}


@pytest.mark.parametrize("name", ["seed.docker-oci.tar", "links.docker-oci.tar", "meta.docker-legacy.tar",
                                  "seed.skopeo-oci-zstd.tar", "whiteout.podman-oci.tar"])
def test_scan_digest_is_what_the_check_recomputes(name: str) -> None:
    with imgfs.open_archive(IMAGES / name, use_cache=False) as a:
        for la in a.image().layers:
            idx = la.index()
            assert idx.meta_digest is not None and meta_digest(idx, la.source()) == idx.meta_digest


def test_a_shared_index_is_refused_where_one_header_byte_differs(tmp_path: Path) -> None:
    # Same names, sizes, first and last member: only one mode differs. The spot check of a cached index
    # would pass; the digest of every header does not, so the good archive's view stays its own.
    good = tar_of([F("a", b"1"), F("run.sh", b"#!/bin/sh\n", mode=0o755), F("z", b"3")])
    evil = tar_of([F("a", b"1"), F("run.sh", b"#!/bin/sh\n", mode=0o4777), F("z", b"3")])
    assert len(good) == len(evil)
    paths = _both_claiming_good(tmp_path, good, evil)
    cache = tmp_path / "cache"
    for name in ("evil", "good", "evil", "good"):  # each overwrites the shared entry; neither sees the other
        with imgfs.open_archive(paths[name], cache_dir=cache) as a:
            mode = a.image().merged().entry("run.sh").mode
        assert mode == (0o4777 if name == "evil" else 0o755), name


@pytest.mark.parametrize("name", ["seed.docker-oci.tar", "seed.skopeo-oci-gzip.tar"])
def test_a_claimed_diff_id_can_never_name_another_blobs_own_cache_file(name: str, tmp_path: Path) -> None:
    # A config's diff_id is "sha256:<64 hex>", and a cache file's name is those 64 hex digits; a blob's own
    # cache files are named by the sha256 of where it sits. An archive claiming exactly such a diff_id, with
    # a layer of the victim's size but other names, must not overwrite what the victim reads back.
    victim = tmp_path / "victim.tar"
    victim.write_bytes((IMAGES / name).read_bytes())
    cache = tmp_path / "cache"
    want = _tree_files(victim, cache_dir=cache)
    own = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file() and p.parent.name in ("idx", "ptr", "gz")}
    assert own
    with imgfs.open_archive(victim, cache_dir=cache) as a:
        sizes = [la.source().size for la in a.image().layers]
    for i, target in enumerate(sorted({p.stem for p in own})):
        size = sizes[i % len(sizes)]
        evil = tar_of([F("planted", b"x" * max(0, size - 3 * 512 - 1024))])
        evil += bytes(max(0, size - len(evil)))
        b = ArchiveBuilder()
        cfg = config_for([evil])
        cfg["rootfs"]["diff_ids"] = ["sha256:" + target]
        b.oci_index([b.oci_image([evil], config=cfg)])
        _tree_files(Path(b.save(tmp_path / f"evil{i}.tar")), cache_dir=cache)
    assert {p: p.read_bytes() for p in own} == own
    assert _tree_files(victim, cache_dir=cache) == want


def test_an_archive_rewritten_in_place_with_its_mtime_restored_is_indexed_again(tmp_path: Path) -> None:
    # `cp -p other.tar image.tar` and `rsync -t` keep the inode, the size and the mtime: only the ctime
    # (and the bytes) tell. The layer is gzip, whose own cached index is not spot-checked against headers.
    def archive(files: list) -> bytes:
        layer = tar_of(files)
        b = ArchiveBuilder()
        b.oci_index([b.oci_image([layer], blobs=[gzip.compress(layer, mtime=0)])])
        return b.tar()

    old = archive([F("etc/passwd", b"p" * 1500)])
    new = archive([F("etc/passwd", b"root:x:0\n\n"), F("etc/group", b"g" * 600)])
    size = max(len(old), len(new))
    old, new = old.ljust(size, b"\0"), new.ljust(size, b"\0")  # zero blocks after the end marker change nothing
    path = tmp_path / "image.tar"
    path.write_bytes(old)
    cache = tmp_path / "cache"
    assert _tree_files(path, cache_dir=cache)[b"etc/passwd"] == b"p" * 1500
    st = path.stat()
    with open(path, "r+b") as fh:  # in place: same inode
        fh.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_ino == st.st_ino and path.stat().st_size == st.st_size
    assert path.stat().st_mtime_ns == st.st_mtime_ns
    assert _tree_files(path, cache_dir=cache) == {b"etc/passwd": b"root:x:0\n\n", b"etc/group": b"g" * 600}
