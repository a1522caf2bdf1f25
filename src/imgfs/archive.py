"""The library's entry point: an archive, its images, their layers and trees, opened lazily."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from . import formats
from .errors import FormatError, ImgfsError, SelectionError
from .formats import ImageDesc, LayerDesc
from .formats.attest import attestation_files
from .stores import BlobStore, open_store
from .tarindex import MemberIndex, Source, scan
from .tarindex.compressed import open_stream
from .tarindex.store import DEFAULT_MAX_BYTES, Store
from .tarindex.trust import index_for
from .tree import Tree, layer_tree, merged_tree
from .tree.refs import check_layer_count

Progress = Callable[[str, int, int], None]
_SHOWN_SKIPPED = 10  # entries a scan left out that are named in warnings, per layer


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
        """Size of the blob as stored, or None if it is missing."""
        try:
            return self.image.archive.blobs.open(self.member).size
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

    def attestations(self) -> list[tuple[str, bytes]]:
        """The statements attached to this image (SBOM, provenance ...): (file name, bytes), named by predicate type."""
        return attestation_files(self.archive.artifacts, self.digest, self.archive.blobs, self.archive.warn)

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
            raise SelectionError("{layer} {sel}: the image has {n} layer{s} (1..{n}, or -1 for the top)",
                                 sel=sel, n=len(layers), s="" if len(layers) == 1 else "s")
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
            raise SelectionError("{layer} {sel!r} matches no layer; layers: {listing}", sel=sel, listing=listing)
        raise SelectionError("{layer} {sel!r} matches {n} layers: {listing}", sel=sel, n=len(hits), listing=listing)

    def __repr__(self) -> str:
        return f"<Image {self.label!r} {self.platform or ''}>"


class Archive:
    """Images in one place: a saved image archive (docker save, podman save, OCI archive; optionally gzipped
    whole), or whatever other store of blobs `open_store` knows."""

    def __init__(self, path: str | os.PathLike[str] | BlobStore, *, cache_dir: str | os.PathLike[str] | None = None,
                 use_cache: bool = True, cache_max_bytes: int = DEFAULT_MAX_BYTES,
                 warn: Callable[[str], None] | None = None, progress: Progress | None = None,
                 store_options: dict[str, object] | None = None) -> None:
        self._warned: set[str] = set()
        self._warn = warn
        self.progress = progress
        self.store = Store(cache_dir, cache_max_bytes, self.warn) if use_cache else None
        if isinstance(path, (str, os.PathLike)):
            self.blobs: BlobStore = open_store(os.fspath(path), cache=self.store, progress=progress,
                                                  **(store_options or {}))
        else:
            self.blobs = path
        self.path = self.blobs.name
        try:
            try:
                self.kind, descs, self.artifacts = formats.describe(self.blobs)
            except FormatError:
                if self.blobs.damage:  # the real cause is the damage, not what it left out
                    raise FormatError(f"damaged or truncated archive: {self.blobs.damage}") from None
                raise
        except BaseException:
            self.blobs.close()
            raise
        if self.blobs.damage:
            self.warn(f"damaged or truncated archive: {self.blobs.damage}")
        self.kind += self.blobs.kind_suffix
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
        """Where a blob sits, as its store names it for the cache (an archive file's identity and offset)."""
        return self.blobs.origin(member)

    def blob(self, member: str) -> tuple[Source, str | None]:
        """The uncompressed bytes of a blob (random access) and the compression it had."""
        with self._lock:
            hit = self._blobs.get(member)
            if hit is None:
                # Seek points and zstd copies are keyed by where the blob sits, not by the digest the
                # manifest claims: an archive that lies about a digest must not change what another shows.
                hit = open_stream(self.blobs.open(member), self.store, self.origin(member),
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
            idx = index_for(self.store, src, self.origin(member), diff_id, member, self.warn,
                            lambda: scan(src, self._scan_progress(f"indexing {member}")))
        except ImgfsError as e:
            with self._lock:
                self._index_errors[member] = e
            raise
        if idx.error:
            self.warn(f"{member}: {idx.error}")
        with self._lock:
            return self._indexes.setdefault(member, idx)

    def select(self, ref: str | None = None, platform: str | None = None) -> list[Image]:
        """Images matching a ref and a platform (the host's preferred among variants of one ref).

        Without a ref, the image the store's name picked (`oci:DIR:tag`), if it picked one.
        """
        chosen = formats.select_images([i.desc for i in self.images], ref or self.blobs.ref, platform)
        ids = {id(d) for d in chosen}
        return [i for i in self.images if id(i.desc) in ids]

    def image(self, ref: str | None = None, platform: str | None = None) -> Image:
        """Exactly one image, or a SelectionError listing the candidates."""
        chosen = self.select(ref, platform)
        if len(chosen) == 1:
            return chosen[0]
        if not chosen:
            raise SelectionError(f"{self.path}: the archive holds no image")
        raise SelectionError("the archive holds {n} images, choose one by {image}: {listing}", n=len(chosen),
                             listing=", ".join(i.label + (f" [{i.platform}]" if i.platform else "") for i in chosen))

    def close(self) -> None:
        """Release file descriptors and decompressed copies."""
        for src, _ in self._blobs.values():
            close = getattr(src, "close", None)
            if close:
                close()
        self.blobs.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_archive(path: str | os.PathLike[str] | BlobStore, **kwargs: Any) -> Archive:
    """Open an image archive, or any place `open_store` knows, by path or reference; errors name it.

    Keywords: cache_dir (default $XDG_CACHE_HOME/imgfs), use_cache, cache_max_bytes, warn(message),
    progress(what, done, total), store_options (open_store's: creds, tls_verify, cert_dir, timeout).
    """
    try:
        return Archive(path, **kwargs)
    except ImgfsError as e:
        where = path.name if not isinstance(path, (str, os.PathLike)) else os.fspath(path)
        raise type(e)(str(e) if str(e).startswith(where + ":") else f"{where}: {e}") from None
