"""When a persisted index may stand in for a scan: the index cache's trust rules, in one place.

Two kinds of index are kept. One made from this very blob is filed under the blob's *origin* (where it
sits: the archive file's identity and the blob's offset); it is used after a cheap check that it fits.
One filed under a layer's diff_id is shared between archives; but a diff_id is only what an archive's
config claims, so such an index is used only where the bytes it was made from (every header and the end
marker: meta_digest) are the same in this stream: a liar can change nothing but its own view. Sharing
needs those header bytes to be cheap to read again (no decompression: see Source.cheap_reread).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..errors import ImgfsError
from .reader import MemberIndex, meta_digest
from .source import OutOfDescriptors, Source, SourceChanged, rereads_cheaply
from .store import StaleIndex, Store, dump_index, load_index, looks_right

# Indexes kept under a layer's diff_id live apart from those kept under where a blob sits ("idx"): a
# diff_id is whatever an archive's config says, and must never name another blob's own cache file.
SHARED = "shared"
OWN = "idx"
POINTER = "ptr"
# What a damaged, foreign or ill-fitting cache file can raise while it is read and checked.
_BAD = (ValueError, KeyError, TypeError, IndexError, OverflowError, UnicodeError, RecursionError, OSError, ImgfsError)
# ...and what is no damage at all, so it must reach the caller: no descriptors left, the archive changed.
_NOT_DAMAGE = (OutOfDescriptors, SourceChanged)


def index_for(store: Store | None, src: Source, origin: str, diff_id: str | None, name: str,
              warn: Callable[[str], None], scan: Callable[[], MemberIndex]) -> MemberIndex:
    """The member index of `src`: a cached one it may trust, else `scan()`'s, then kept for next time.

    `origin` says where the blob sits, `diff_id` what its archive claims it is; `name` is for messages.
    """
    if store is None:
        return scan()
    idx, found = cached_index(store, src, origin, diff_id, name, warn)
    if idx is None:
        idx = scan()
    if found != "origin":
        keep(store, src, origin, diff_id, idx, found is not None)
    return idx


def keep(store: Store, src: Source, origin: str, diff_id: str | None, idx: MemberIndex, shared_exists: bool) -> None:
    """Persist a scanned (or shared) index: one copy under the diff_id where it can be checked cheaply
    (this blob then only points at it, with the digest it matched), else under the blob's origin."""
    if diff_id and idx.meta_digest and rereads_cheaply(src):
        if not shared_exists:
            store.write_with(SHARED, diff_id, ".idx", lambda fh: dump_index(idx, src.size, fh))
        store.write(POINTER, origin, ".ptr", json.dumps({"key": diff_id, "md": idx.meta_digest}).encode())
    else:
        store.write_with(OWN, origin, ".idx", lambda fh: dump_index(idx, src.size, fh))


def _load(store: Store, kind: str, key: str) -> tuple[MemberIndex, int] | None:
    """A cached index and the stream size it was made for; None if absent or of an earlier format."""
    fh = store.open(kind, key, ".idx")
    if fh is None:
        return None
    with fh:  # parsed from the file: the arrays go straight into place, the checksum is taken as they do
        try:
            hit = load_index(fh)  # type: ignore[arg-type]
        except StaleIndex:
            return None  # written by an earlier imgfs: rebuilt, and no damage to warn about
        fh.verify()
    return hit


def cached_index(store: Store, src: Source, origin: str, diff_id: str | None, name: str,
                 warn: Callable[[str], None]) -> tuple[MemberIndex | None, str | None]:
    """A persisted index that fits `src`, and where it came from ("origin", "shared" or None: not found).

    First one made from this very blob (an archive file not changed since). Then one another archive
    left under the layer's diff_id, used only where its header bytes hash the same here.
    """
    shareable = rereads_cheaply(src)
    damaged = f"cache: the index of {name} is corrupt or does not fit; rebuilding it"
    try:
        hit = _load(store, OWN, origin)
        if hit is not None and looks_right(hit[0], src, hit[1], spot_check=shareable):
            return hit[0], "origin"
        if hit is not None:
            warn(damaged)
    except _NOT_DAMAGE:
        raise
    except _BAD:
        warn(damaged)
    candidates = []
    try:
        pointer = store.read(POINTER, origin, ".ptr") if shareable else None
        if pointer is not None:  # this blob matched that shared index before: the same digest will do
            ptr = json.loads(pointer)
            candidates.append((str(ptr["key"]), str(ptr["md"])))
    except _NOT_DAMAGE:
        raise
    except _BAD:
        warn(damaged)
    if diff_id and shareable:
        candidates.append((diff_id, None))
    for key, known in candidates:
        try:
            hit = _load(store, SHARED, key)
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
        except _NOT_DAMAGE:
            raise
        except _BAD:
            warn(damaged)
            break
    return None, None
