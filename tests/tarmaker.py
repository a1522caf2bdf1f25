"""Build small tar streams for the engine tests: through tarfile, or header by header for what tarfile cannot write.

Imported by the tests under tests/tarindex, tests/tree and tests/formats as `tarindex.tarmaker`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable

from imgfs.errors import TruncatedError
from imgfs.tarindex import MemberIndex, scan
from imgfs.tree import Tree, merged_tree

BLOCK = 512
END = bytes(2 * BLOCK)  # end-of-archive marker: two zero blocks

Member = tuple[tarfile.TarInfo, bytes | None]


class BytesSource:
    """A Source over bytes in memory (the engine only needs `size` and `pread`)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, or TruncatedError, as the Source protocol asks."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedError(f"read of {length} at {offset} past {self.size}")
        return self.data[offset:offset + length]


# -- header by header ---------------------------------------------------------------------------
def octal(value: int, width: int) -> bytes:
    """A numeric field as tar writes it: zero-padded octal digits and a NUL."""
    return f"{value:0{width - 1}o}".encode() + b"\0"


def base256(value: int, width: int) -> bytes:
    """A numeric field in GNU base-256: high bit set, big-endian two's complement."""
    if value < 0:
        return (value % (1 << (8 * width))).to_bytes(width, "big")  # 0xFF... lead byte
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _field(value: int | bytes, width: int) -> bytes:
    """A numeric header field: octal digits for an int, raw bytes as given, NUL-padded to `width`."""
    raw = octal(value, width) if isinstance(value, int) else value
    assert len(raw) <= width, (raw, width)
    return raw.ljust(width, b"\0")


def header(name: bytes, *, size: int | bytes = 0, typeflag: bytes = b"0", mode: int | bytes = 0o644,
           uid: int | bytes = 0, gid: int | bytes = 0, mtime: int | bytes = 0, linkname: bytes = b"",
           prefix: bytes = b"", magic: bytes = b"ustar\x0000", devmajor: int | bytes = 0,
           devminor: int | bytes = 0, checksum: int | None = None) -> bytes:
    """One 512-byte ustar header; numbers may be given as raw field bytes (e.g. base256(...))."""
    parts = [
        name.ljust(100, b"\0"), _field(mode, 8), _field(uid, 8), _field(gid, 8), _field(size, 12),
        _field(mtime, 12), b" " * 8, typeflag, linkname.ljust(100, b"\0"), magic.ljust(8, b"\0"),
        b"root".ljust(32, b"\0"), b"root".ljust(32, b"\0"), _field(devmajor, 8), _field(devminor, 8),
        prefix.ljust(155, b"\0"),
    ]
    block = b"".join(parts).ljust(BLOCK, b"\0")
    assert len(block) == BLOCK
    chk = sum(block) if checksum is None else checksum
    return block[:148] + f"{chk:06o}".encode() + b"\0 " + block[156:]


def pad(data: bytes) -> bytes:
    """`data` padded with zeros to a whole number of blocks."""
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes, data: bytes = b"", **kw: object) -> bytes:
    """A header plus its padded data; `size` defaults to len(data)."""
    kw.setdefault("size", len(data))
    return header(name, **kw) + pad(data)  # type: ignore[arg-type]


def pax_records(records: dict[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> bytes:
    """PAX extended header payload: '<len> <key>=<value>\\n' records, each length counting itself."""
    items = records.items() if isinstance(records, dict) else records
    out = []
    for k, v in items:
        body = b" " + k + b"=" + v + b"\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        out.append(str(n).encode() + body)
    return b"".join(out)


def pax(records: dict[bytes, bytes] | Iterable[tuple[bytes, bytes]], typeflag: bytes = b"x") -> bytes:
    """A PAX header member ('x' for the next member, 'g' global) with its records."""
    return member(b"PaxHeader", pax_records(records), typeflag=typeflag)


# -- through tarfile ----------------------------------------------------------------------------
def _info(name: str, kind: bytes, mode: int, uid: int, gid: int, mtime: float) -> tarfile.TarInfo:
    """A TarInfo with the common attributes set."""
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, gid, mtime
    return ti


def F(name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0, mtime: float = 0) -> Member:
    """A regular file."""
    ti = _info(name, tarfile.REGTYPE, mode, uid, gid, mtime)
    ti.size = len(data)
    return ti, data


def D(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: float = 0) -> Member:
    """A directory."""
    return _info(name, tarfile.DIRTYPE, mode, uid, gid, mtime), None


def S(name: str, target: str, mtime: float = 0) -> Member:
    """A symbolic link."""
    ti = _info(name, tarfile.SYMTYPE, 0o777, 0, 0, mtime)
    ti.linkname = target
    return ti, None


def H(name: str, target: str) -> Member:
    """A hard link to `target` (a path from the layer root)."""
    ti = _info(name, tarfile.LNKTYPE, 0o644, 0, 0, 0)
    ti.linkname = target
    return ti, None


def WH(path: str) -> Member:
    """The whiteout that deletes `path` (Docker writes an empty 0600 file)."""
    d, _, base = path.rpartition("/")
    return F(f"{d}/.wh.{base}" if d else f".wh.{base}", mode=0o600)


def OPQ(directory: str) -> Member:
    """The opaque marker of `directory`."""
    return F(f"{directory}/.wh..wh..opq" if directory else ".wh..wh..opq", mode=0o600)


def tar_of(members: Iterable[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar stream holding `members` in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def index_of(data: bytes) -> MemberIndex:
    """Scan a tar stream held in memory."""
    return scan(BytesSource(data))


def merge(*layers: bytes | list[Member]) -> Tree:
    """The merged tree of layer tars (bottom first); a list of members is made into a tar first."""
    datas = [tar_of(la) if isinstance(la, list) else la for la in layers]
    tree, _ = merged_tree([index_of(d) for d in datas], [BytesSource(d) for d in datas])
    return tree


# -- whole image archives -------------------------------------------------------------------------
def digest_of(data: bytes) -> str:
    """The sha256 digest string of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_for(layers: list[bytes], history: list[dict] | None = None, **extra: object) -> dict:
    """An image config whose diff_ids are those of the (uncompressed) layer tars given."""
    cfg: dict = {"architecture": "amd64", "os": "linux",
                 "rootfs": {"type": "layers", "diff_ids": [digest_of(la) for la in layers]}}
    if history is None:
        history = [{"created_by": f"RUN step {n + 1}"} for n in range(len(layers))]
    cfg["history"] = history
    cfg.update(extra)
    return cfg


def _raw(data: bytes | dict | list | str) -> bytes:
    """Member bytes: bytes as they are, text as UTF-8 (lone surrogates kept), anything else as JSON."""
    if isinstance(data, bytes):
        return data
    return data.encode("utf-8", "surrogatepass") if isinstance(data, str) else json.dumps(data).encode()


class ArchiveBuilder:
    """The members of an image archive, written as one tar; JSON documents are serialised as given."""

    def __init__(self) -> None:
        self.members: dict[str, bytes] = {}
        self.symlinks: dict[str, str] = {}

    def add(self, path: str, data: bytes | dict | list | str) -> bytes:
        """A member at `path` (dicts and lists become JSON); returns its bytes."""
        self.members[path] = raw = _raw(data)
        return raw

    def blob(self, data: bytes | dict | list, media_type: str | None = None, **extra: object) -> dict:
        """Store `data` under blobs/sha256/ and return its OCI descriptor."""
        raw = _raw(data)
        d = digest_of(raw)
        self.members["blobs/sha256/" + d.split(":")[1]] = raw
        desc: dict = {"digest": d, "size": len(raw)}
        if media_type:
            desc["mediaType"] = media_type
        desc.update(extra)
        return desc

    def oci_image(self, layers: list[bytes], config: dict | None = None, blobs: list[bytes] | None = None,
                  **desc_extra: object) -> dict:
        """Config, layers (stored as `blobs`, e.g. compressed, when given) and manifest; the manifest descriptor."""
        cfg = self.blob(config if config is not None else config_for(layers),
                        "application/vnd.oci.image.config.v1+json")
        lds = [self.blob(b, "application/vnd.oci.image.layer.v1.tar") for b in (blobs or layers)]
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cfg, "layers": lds}
        return self.blob(manifest, "application/vnd.oci.image.manifest.v1+json", **desc_extra)

    def oci_index(self, manifests: list[dict], path: str = "index.json") -> dict:
        """An image index listing `manifests`: written at `path`, or as a blob when path is None."""
        doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        if path:
            self.add("oci-layout", {"imageLayoutVersion": "1.0.0"})
            self.add(path, doc)
            return doc
        return self.blob(doc, "application/vnd.oci.image.index.v1+json")

    def docker_image(self, layers: list[bytes], tags: list[str], config: dict | None = None,
                     prefix: str = "") -> dict:
        """A legacy `docker save` image (<id>/layer.tar, <id>.json); returns its manifest.json entry."""
        cfg_raw = json.dumps(config if config is not None else config_for(layers)).encode()
        cfg_name = hashlib.sha256(cfg_raw).hexdigest() + ".json"
        self.members[cfg_name] = cfg_raw
        paths = []
        for la in layers:
            v1 = hashlib.sha256(b"v1" + la).hexdigest()
            self.members[f"{v1}/layer.tar"] = la
            self.members[f"{v1}/VERSION"] = b"1.0"
            paths.append(prefix + f"{v1}/layer.tar")
        return {"Config": prefix + cfg_name, "RepoTags": tags, "Layers": paths}

    def symlink(self, path: str, target: str) -> None:
        """An archive member that is a symlink (legacy docker save dedups layers so)."""
        self.symlinks[path] = target

    def tar(self) -> bytes:
        """The archive as tar bytes, directories implied by member paths first."""
        dirs = sorted({p.rsplit("/", 1)[0] for p in [*self.members, *self.symlinks] if "/" in p})
        entries: list[Member] = [D(d) for d in dirs]
        entries += [F(p, data) for p, data in self.members.items()]
        entries += [S(p, t) for p, t in self.symlinks.items()]
        return tar_of(entries)

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the archive to `path`; returns the path."""
        with open(path, "wb") as fh:
            fh.write(self.tar())
        return os.fspath(path)
