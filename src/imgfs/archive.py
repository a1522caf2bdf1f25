"""The library's entry point: an archive, its images, their layers and trees, opened lazily."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from typing import Any

from . import formats
from .errors import FormatError, ImgfsError, SelectionError
from .formats import ImageDesc, LayerDesc
from .formats.model import MAX_JSON
from .tarindex import FileSource, MemberIndex, Source, meta_digest, scan
from .tarindex.compressed import GzipSource, open_stream
from .tarindex.reader import HARDLINK, SYMLINK, normalize
from .tarindex.source import SliceSource
from .tarindex.sparse import SparseSource
from .tarindex.store import DEFAULT_MAX_BYTES, StaleIndex, Store, dump_index, load_index, looks_right
from .tree import Tree, layer_tree, merged_tree
from .tree.refs import check_layer_count

Progress = Callable[[str, int, int], None]
# Indexes kept under a layer's diff_id live apart from those kept under where a blob sits ("idx"): a
# diff_id is whatever an archive's config says, and must never name another blob's own cache file.
SHARED = "shared"
_SHOWN_SKIPPED = 10  # entries a scan left out that are named in warnings, per layer


class _OuterReader:
    """Members of the outer tar by path, following the archive's own symlinks and hard links."""

    def __init__(self, src: Source, index: MemberIndex) -> None:
        self.src = src
        self.index = index
        self.by_name = {name: i for i, name in enumerate(index.names)}

    def member(self, path: str) -> int | None:
        key: bytes | None = normalize(path.encode("utf-8", "surrogateescape"))
        for _ in range(40):
            if key is None:
                return None
            i = self.by_name.get(key)
            if i is None:
                return None
            k = self.index.kinds[i]
            if k == SYMLINK:  # legacy docker save: <id>/layer.tar -> ../<id2>/layer.tar
                target = self.index.links.get(i, b"")
                base = b"" if target.startswith(b"/") else key.rpartition(b"/")[0]
                key = normalize(base + b"/" + target if base else target)
            elif k == HARDLINK:
                key = normalize(self.index.links.get(i, b""))
            else:
                return i
        return None

    def exists(self, path: str) -> bool:
        return self.member(path) is not None

    def slice(self, path: str) -> SliceSource | SparseSource:
        i = self.member(path)
        if i is None:
            raise FormatError(f"{path} is missing from the archive")
        offset, size = self.index.offsets[i], self.index.sizes[i]
        sparse = self.index.sparse.get(i)
        if sparse is not None and i not in self.index.broken:
            return SparseSource(self.src, sparse, size)
        if offset + size > self.src.size and sparse is None:
            # Cut by the end of a truncated archive: what is there is served, so that a layer keeps its
            # complete members (its own scan marks the cut one broken and says so).
            size = self.src.size - offset
        elif self.index.broken.get(i):
            raise FormatError(f"{path}: {self.index.broken[i]}")
        return SliceSource(self.src, offset, size)

    def read(self, path: str) -> bytes:
        s = self.slice(path)
        if s.size > MAX_JSON:  # only JSON documents are read whole: refuse before reading, not after
            raise FormatError(f"{path} is {s.size} bytes, larger than any manifest or config ({MAX_JSON})")
        return s.pread(0, s.size)


class Layer:
    """One layer of an image: its blob, its name, and (on demand) its member index and tree."""

    def __init__(self, image: Image, position: int, desc: LayerDesc, name: str,
                 created_by: str | None, created: str | None) -> None:
        self.image = image
        self.position = position
        self.desc = desc
        self.name = name
        self.created_by = created_by
        self.created = created

    @property
    def number(self) -> int:
        """1-based position, bottom layer first."""
        return self.position + 1

    @property
    def digest(self) -> str | None:
        """The blob digest (compressed, when the blob is); an uncompressed blob's is its diff_id."""
        if self.desc.digest:
            return self.desc.digest
        try:
            return self.desc.diff_id if self.compression is None else None
        except ImgfsError:
            return None

    @property
    def diff_id(self) -> str | None:
        """The digest of the uncompressed layer tar, from the config."""
        return self.desc.diff_id

    @property
    def member(self) -> str:
        """The blob's path inside the archive."""
        return self.desc.member

    @property
    def blob_size(self) -> int | None:
        """Size of the blob as stored in the archive, or None if it is missing."""
        try:
            return self.image.archive.reader.slice(self.member).size
        except ImgfsError:
            return None

    @property
    def compression(self) -> str | None:
        """'gzip', 'zstd' or None, from the blob's magic bytes."""
        return self.image.archive.blob(self.member)[1]

    def index(self) -> MemberIndex:
        """The layer's member index (scanned once, shared by every image and archive using the layer)."""
        return self.image.archive.layer_index(self.member, self.diff_id)

    def source(self) -> Source:
        """The layer's uncompressed bytes."""
        return self.image.archive.blob(self.member)[0]

    def tree(self) -> Tree:
        """The layer as its tar holds it, whiteout markers included."""
        return self.image.layer_tree(self.position)

    def __repr__(self) -> str:
        return f"<Layer {self.name!r}>"


class Image:
    """One image of an archive: config, layers (bottom first) and the merged root filesystem."""

    def __init__(self, archive: Archive, desc: ImageDesc) -> None:
        self.archive = archive
        self.desc = desc
        digests = [ld.diff_id or ld.digest for ld in desc.layers]
        names, commands, warnings = formats.layer_names(desc.config, digests)
        hist, _ = formats.naming.history_for_layers(desc.config, len(desc.layers))
        self.warnings: list[str] = list(desc.warnings) + warnings
        self.layers = [
            Layer(self, i, ld, names[i], commands[i],
                  h.get("created") if h and isinstance(h.get("created"), str) else None)
            for i, (ld, h) in enumerate(zip(desc.layers, hist, strict=False))
        ]
        self._lock = threading.Lock()  # the small caches below
        self._merged_lock = threading.Lock()  # held through the (long) merged build only
        self._read_lock = threading.Lock()  # held while one layer is read (_read_layer)
        self._merged: Tree | None = None
        self._link_refs: dict[int, int] = {}
        self._layer_trees: dict[int, Tree] = {}
        # Every layer's index and bytes, filled as layers are read: one pair of lists shared by all the
        # image's trees (a list a tree made memory grow with the square of the layer count).
        self._indexes: list[MemberIndex | None] = [None] * len(self.layers)
        self._sources: list[Source | None] = [None] * len(self.layers)
        self._unreadable: dict[int, str] = {}  # layer position -> why it cannot be read
        self.partial = False  # what merged() does by default when a layer cannot be read (see merged)

    @property
    def label(self) -> str:
        """A short human name: the first tag or ref, else a digest prefix."""
        return formats.label(self.desc)

    @property
    def refs(self) -> list[str]:
        """Tags and reference names the archive gives this image."""
        return self.desc.refs

    @property
    def digest(self) -> str | None:
        """The manifest digest, where the archive records one."""
        return self.desc.digest

    @property
    def config_digest(self) -> str | None:
        """The digest of the config blob (the image ID for Docker)."""
        return self.desc.config_digest

    @property
    def platform(self) -> str | None:
        """os/arch[/variant]."""
        return self.desc.platform

    @property
    def config(self) -> dict[str, Any]:
        """The image config document."""
        return self.desc.config

    def _read_layer(self, position: int) -> None:
        """Fill in one layer's index and bytes, or note why the merged root cannot have it (_unreadable).

        A layer that went bad part way (a corrupt header, a refused PAX record) keeps its index, for its
        own tree, but counts as unreadable: what follows the damage, whiteouts too, is lost. One that
        merely ends early (truncated) does not: nothing after the cut exists to be lost.
        """
        # One reader at a time: the mount's prebuild and its first lookup would otherwise both scan every layer.
        with self._read_lock:
            if self._indexes[position] is not None or position in self._unreadable:
                return
            self._read_layer_locked(position)

    def _read_layer_locked(self, position: int) -> None:
        layer = self.layers[position]
        try:
            idx, src = layer.index(), layer.source()
        except ImgfsError as e:
            self._unreadable[position] = f"layer {layer.number} ({layer.member}) cannot be read: {e}"
        else:
            self._sources[position] = src
            self._indexes[position] = idx
            if idx.error and not idx.truncated:
                self._unreadable[position] = (f"layer {layer.number} ({layer.member}) is damaged after "
                                              f"{len(idx)} entries: {idx.error}")
            for why in idx.skipped[:_SHOWN_SKIPPED]:
                self.archive.warn(f"layer {layer.number}: {why}; left out")
            if len(idx.skipped) > _SHOWN_SKIPPED:
                self.archive.warn(f"layer {layer.number}: {len(idx.skipped) - _SHOWN_SKIPPED} more entries "
                                  "left out")

    def layer_inputs(self, partial: bool | None = None) -> tuple[list[MemberIndex | None], list[Source | None]]:
        """Each layer's member index and bytes, bottom first (lists shared with the image's trees).

        A layer that cannot be read raises a FormatError naming it; with `partial` (default: the `partial`
        attribute) what can be read of it is used instead (None if nothing), and warned of. A truncated
        layer is not unreadable: its complete members are there, the cut one reads as an I/O error, and a
        warning names it.
        """
        self._read_layers()
        for why in self._unreadable.values():
            if not (self.partial if partial is None else partial):
                raise FormatError(f"{why}; without it the merged root would be a stale view")
            self.archive.warn(f"partial view: {why}; the merged root lacks what it cannot read")
        return self._indexes, self._sources

    def merged(self, partial: bool | None = None) -> Tree:
        """The root filesystem with every layer applied (built once; layer trees need not wait for it).

        If a layer cannot be read this raises a FormatError naming it, since the lower layers alone would
        show what it deletes or replaces; with `partial` (default: the `partial` attribute) the view
        without it is returned, with a warning.
        """
        self.layer_inputs(partial)
        return self._merged_tree()

    def _read_layers(self) -> None:
        check_layer_count(len(self.layers))
        for position in range(len(self.layers)):
            self._read_layer(position)

    def _merged_tree(self) -> Tree:
        """The merged tree of every layer that can be read."""
        with self._merged_lock:
            if self._merged is None:
                self._read_layers()
                self._merged, self._link_refs = merged_tree(self._indexes, self._sources)
                for w in self._merged.warnings:
                    self.archive.warn(w)
            return self._merged

    def layer_tree(self, position: int) -> Tree:
        """One layer's own tree (built once)."""
        with self._lock:
            tree = self._layer_trees.get(position)
        if tree is not None:
            return tree
        check_layer_count(len(self.layers))
        self._read_layer(position)
        if self._indexes[position] is None:
            raise FormatError(self._unreadable[position])

        def link_refs() -> dict[int, int]:
            # Hard links into lower layers resolve as the merged build resolved them (LAYER-RULES rule 21);
            # only lower layers matter for that, so an unreadable one elsewhere does not stop this layer.
            self._merged_tree()
            return self._link_refs

        tree = layer_tree(position, self._indexes, self._sources, link_refs)
        for w in tree.warnings:
            self.archive.warn(w)
        with self._lock:
            return self._layer_trees.setdefault(position, tree)

    def find_layer(self, sel: str) -> Layer:
        """Pick a layer by 1-based index (negative from the top), digest prefix or command substring."""
        layers = self.layers
        try:
            n = int(sel)
        except ValueError:
            n = None
        if n is not None:
            if 1 <= n <= len(layers):
                return layers[n - 1]
            if -len(layers) <= n <= -1:
                return layers[n]
            raise SelectionError(
                f"--layer {sel}: the image has {len(layers)} layers (1..{len(layers)}, or -1 for the top)")
        s = sel.removeprefix("sha256:")
        hits = []
        if len(s) >= 4 and all(c in "0123456789abcdef" for c in s):
            hits = [la for la in layers if any(d and d.removeprefix("sha256:").startswith(s)
                                                for d in (la.digest, la.diff_id))]
        if not hits:
            hits = [la for la in layers if la.created_by and sel in la.created_by]
        if not hits:
            hits = [la for la in layers if sel in la.name]
        if len(hits) == 1:
            return hits[0]
        listing = "; ".join(la.name for la in (hits or layers))
        if not hits:
            raise SelectionError(f"--layer {sel!r} matches no layer; layers: {listing}")
        raise SelectionError(f"--layer {sel!r} matches {len(hits)} layers: {listing}")

    def __repr__(self) -> str:
        return f"<Image {self.label!r} {self.platform or ''}>"


class Archive:
    """A saved image archive (docker save, podman save, OCI archive; optionally gzipped whole)."""

    def __init__(self, path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None,
                 use_cache: bool = True, cache_max_bytes: int = DEFAULT_MAX_BYTES,
                 warn: Callable[[str], None] | None = None, progress: Progress | None = None) -> None:
        self.path = os.fspath(path)
        self._warned: set[str] = set()
        self._warn = warn
        self.progress = progress
        self.store = Store(cache_dir, cache_max_bytes, self.warn) if use_cache else None
        if os.path.isdir(self.path):
            raise FormatError("is a directory, not an image archive (give the .tar file)")
        self.file = FileSource(self.path)
        if self.file.size == 0:
            raise FormatError("is empty, not an image archive")
        dev, ino, size, mtime_ns = self.file.identity
        # Seek points of a whole-archive gzip depend on this very file: key them by its identity.
        self.identity = f"file:{os.path.abspath(self.path)}:{dev}:{ino}:{size}:{mtime_ns}"
        self.outer, self.outer_compression = open_stream(self.file, self.store, self.identity,
                                                         self._scan_progress("decompressing archive"))
        self.index = scan(self.outer, self._scan_progress("reading archive"))
        self.reader = _OuterReader(self.outer, self.index)
        try:
            self.kind, descs = formats.describe(self.reader)
        except FormatError:
            if self.index.error:  # the real cause is the damage, not what it left out
                raise FormatError(f"damaged or truncated archive: {self.index.error}") from None
            raise
        if self.index.error:
            self.warn(f"damaged or truncated archive: {self.index.error}")
        if self.outer_compression:
            self.kind += "+" + self.outer_compression
        self.images = [Image(self, d) for d in descs]
        self._lock = threading.Lock()
        self._blobs: dict[str, tuple[Source, str | None]] = {}
        self._indexes: dict[str, MemberIndex] = {}
        self._index_errors: dict[str, ImgfsError] = {}
        for img in self.images:
            for w in img.warnings:
                self.warn(f"{img.label}: {w}")

    def warn(self, message: str) -> None:
        """Report a problem once (to the callback given, if any)."""
        if message in self._warned:
            return
        self._warned.add(message)
        if self._warn is not None:
            self._warn(message)

    def _scan_progress(self, what: str) -> Callable[[int, int], None] | None:
        if self.progress is None:
            return None
        cb = self.progress
        return lambda done, total: cb(what, done, total)

    def origin(self, member: str) -> str:
        """Where a blob sits: this very archive file (path, device, inode, size, mtime) and its offset."""
        return f"{self.identity}@{self.reader.slice(member).base}"

    def blob(self, member: str) -> tuple[Source, str | None]:
        """The uncompressed bytes of a blob (random access) and the compression it had."""
        with self._lock:
            hit = self._blobs.get(member)
            if hit is None:
                # Seek points and zstd copies are keyed by where the blob sits, not by the digest the
                # manifest claims: an archive that lies about a digest must not change what another shows.
                hit = open_stream(self.reader.slice(member), self.store, self.origin(member),
                                  self._scan_progress(f"decompressing {member}"))
                self._blobs[member] = hit
            return hit

    def layer_index(self, member: str, diff_id: str | None = None) -> MemberIndex:
        """Index a layer blob once; the index is shared by images here and, through the cache, later."""
        with self._lock:
            if member in self._indexes:
                return self._indexes[member]
            if member in self._index_errors:
                raise self._index_errors[member]
        try:
            src, _ = self.blob(member)
            idx, found = self._cached_index(src, member, diff_id)
            if idx is None:
                idx = scan(src, self._scan_progress(f"indexing {member}"))
            if self.store is not None and found != "origin":
                shared = diff_id if diff_id and idx.meta_digest and self._shareable(src) else None
                if shared is None:
                    self.store.write_with("idx", self.origin(member), ".idx", lambda fh: dump_index(idx, src.size, fh))
                else:  # one copy under the diff_id; this blob only points at it, with the digest it matched
                    if found is None:
                        self.store.write_with(SHARED, shared, ".idx", lambda fh: dump_index(idx, src.size, fh))
                    self.store.write("ptr", self.origin(member), ".ptr",
                                     json.dumps({"key": shared, "md": idx.meta_digest}).encode())
        except ImgfsError as e:
            with self._lock:
                self._index_errors[member] = e
            raise
        if idx.error:
            self.warn(f"{member}: {idx.error}")
        with self._lock:
            return self._indexes.setdefault(member, idx)

    @staticmethod
    def _shareable(src: Source) -> bool:
        """Whether checking an index against `src` is cheap: reading headers must not mean decompressing."""
        return not isinstance(src, GzipSource)

    def _cached_index(self, src: Source, member: str, diff_id: str | None) -> tuple[MemberIndex | None, str | None]:
        """A persisted index that fits `src`, and where it came from ("origin", "shared" or None: not found).

        First one made from this very blob (an archive file not changed since). Then one another archive
        left under the layer's diff_id: a diff_id is only a claim, so that index is used only where the
        bytes it was made from, every header and the end marker (meta_digest), are the same here; a liar
        can then change nothing but its own view.
        """
        if self.store is None:
            return None, None
        origin, shareable, store = self.origin(member), self._shareable(src), self.store
        bad = (ValueError, KeyError, TypeError, IndexError, OverflowError, UnicodeError, RecursionError, OSError,
               ImgfsError)

        def load(kind: str, key: str) -> tuple[MemberIndex, int] | None:
            fh = store.open(kind, key, ".idx")
            if fh is None:
                return None
            with fh:  # parsed from the file: the arrays go straight into place
                try:
                    return load_index(fh)
                except StaleIndex:
                    return None  # written by an earlier imgfs: rebuilt, and no damage to warn about

        try:
            hit = load("idx", origin)
            if hit is not None and looks_right(hit[0], src, hit[1], spot_check=shareable):
                return hit[0], "origin"
            damaged = hit is not None
        except bad:
            damaged = True
        if damaged:
            self.warn(f"cache: the index of {member} is corrupt or does not fit; rebuilding it")
        pointer = self.store.read("ptr", origin, ".ptr") if shareable else None
        candidates = []
        with contextlib.suppress(*bad):
            if pointer is not None:  # this blob matched that shared index before: the same digest will do
                ptr = json.loads(pointer)
                candidates.append((str(ptr["key"]), str(ptr["md"])))
        if diff_id and shareable:
            candidates.append((diff_id, None))
        for key, known in candidates:
            try:
                hit = load(SHARED, key)
                if hit is None:
                    continue
                idx, size = hit
                # A mismatch is no damage: another archive's layer under the same claim. Scan instead.
                if size != src.size or idx.meta_digest is None:
                    continue
                if known is not None:
                    if idx.meta_digest == known and looks_right(idx, src, size):
                        return idx, "origin"
                elif meta_digest(idx, src) == idx.meta_digest:
                    return idx, "shared"
            except bad:
                self.warn(f"cache: the index of {member} is corrupt or does not fit; rebuilding it")
                break
        return None, None

    def select(self, ref: str | None = None, platform: str | None = None) -> list[Image]:
        """Images matching --image/--platform (host platform preferred among variants)."""
        chosen = formats.select_images([i.desc for i in self.images], ref, platform)
        ids = {id(d) for d in chosen}
        return [i for i in self.images if id(i.desc) in ids]

    def image(self, ref: str | None = None, platform: str | None = None) -> Image:
        """Exactly one image, or a SelectionError listing the candidates."""
        chosen = self.select(ref, platform)
        if len(chosen) == 1:
            return chosen[0]
        if not chosen:
            raise SelectionError(f"{self.path}: the archive holds no image")
        raise SelectionError(
            f"the archive holds {len(chosen)} images, choose one with --image: "
            + ", ".join(i.label + (f" [{i.platform}]" if i.platform else "") for i in chosen))

    def close(self) -> None:
        """Release file descriptors and decompressed copies."""
        for src, _ in self._blobs.values():
            close = getattr(src, "close", None)
            if close:
                close()
        close = getattr(self.outer, "close", None)
        if close and self.outer is not self.file:
            close()
        self.file.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_archive(path: str | os.PathLike[str], **kwargs: Any) -> Archive:
    """Open an image archive; errors name the archive.

    Keywords: cache_dir (default $XDG_CACHE_HOME/imgfs), use_cache, cache_max_bytes, warn(message),
    progress(what, done, total).
    """
    try:
        return Archive(path, **kwargs)
    except ImgfsError as e:
        where = os.fspath(path)
        raise type(e)(str(e) if str(e).startswith(where + ":") else f"{where}: {e}") from None
