"""An fsspec filesystem over an image's merged root (or one layer): `fsspec.open("imgfs://etc/os-release", fo=...)`."""

from __future__ import annotations

import io
from typing import Any

from fsspec.spec import AbstractFileSystem

from .archive import open_archive
from .errors import ImgfsError
from .tarindex.source import SourceFile
from .tree import Tree

_TYPES = {"file": "file", "dir": "directory", "symlink": "link"}


class _Member:
    """One regular file of a tree as a Source (reads past its end come back short, as files do)."""

    def __init__(self, tree: Tree, ref: int, size: int) -> None:
        self.tree, self.ref, self.size = tree, ref, size

    def pread(self, offset: int, length: int) -> bytes:
        try:
            return self.tree.read(self.ref, offset, length)
        except ImgfsError as e:
            raise OSError(str(e)) from None


class ImgfsFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over an image archive.

    Storage options: fo (the archive path, required), image (a ref: tag, name or digest prefix), platform,
    layer (browse that layer instead of the merged root: a 1-based index, negative from the top, a digest
    prefix or a piece of its command), and open_archive's keywords.
    """

    protocol = "imgfs"
    root_marker = "/"
    cachable = False  # one instance per archive path and options is enough; fsspec caches by arguments

    def __init__(self, fo: str = "", image: str | None = None, platform: str | None = None,
                 layer: str | None = None, **kwargs: Any) -> None:
        archive_kw = {k: kwargs.pop(k) for k in ("cache_dir", "use_cache", "cache_max_bytes") if k in kwargs}
        super().__init__(**kwargs)
        if not fo:
            raise ValueError("imgfs needs fo=<path of the image archive>")
        self.archive = open_archive(fo, **archive_kw)
        img = self.archive.image(image, platform)
        self.tree = img.layer_tree(img.find_layer(layer).position) if layer else img.merged()

    @classmethod
    def _strip_protocol(cls, path: str | list[str]) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = path.removeprefix("imgfs://").removeprefix("imgfs:")
        return "/" + path.strip("/")

    def _key(self, path: str) -> bytes:
        return self._strip_protocol(path).strip("/").encode("utf-8", "surrogateescape")

    def _info(self, key: bytes, ref: int) -> dict[str, Any]:
        e = self.tree.entry_for(key, ref)
        info: dict[str, Any] = {
            "name": "/" + key.decode("utf-8", "surrogateescape"), "size": e.size, "type": _TYPES.get(e.kind, "other"),
            "mode": e.st_mode, "uid": e.uid, "gid": e.gid, "mtime": e.mtime, "nlink": e.nlink, "ino": e.ino,
            "islink": e.kind == "symlink",
        }
        if e.linkname is not None:
            info["destination"] = e.linkname.decode("utf-8", "surrogateescape")
        return info

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """Metadata of one path (symlinks are not followed)."""
        key = self._key(path)
        ref = self.tree.nodes.get(key)
        if ref is None:
            raise FileNotFoundError(path)
        return self._info(key, ref)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """A directory's entries (or the path itself, if it is not a directory)."""
        key = self._key(path)
        ref = self.tree.nodes.get(key)
        if ref is None:
            raise FileNotFoundError(path)
        if self.tree.entry_for(key, ref).kind != "dir":
            out = [self._info(key, ref)]
        else:
            out = [self._info(c, self.tree.nodes[c]) for c in self.tree.child_paths(key)]
        return out if detail else [o["name"] for o in out]

    def _file(self, path: str) -> tuple[int, int]:
        """(ref, size) of the regular file `path` leads to, symlinks followed inside the image."""
        key = self.tree.resolve(self._key(path))
        ref = self.tree.nodes.get(key) if key is not None else None
        if ref is None:
            raise FileNotFoundError(path)
        e = self.tree.entry_for(key, ref)  # type: ignore[arg-type]
        if e.kind != "file":
            raise IsADirectoryError(path) if e.kind == "dir" else OSError(f"{path}: not a regular file")
        return ref, e.size

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> io.BufferedReader:
        if mode != "rb":
            raise PermissionError("imgfs is read-only")
        ref, size = self._file(path)
        return io.BufferedReader(SourceFile(_Member(self.tree, ref, size)), buffer_size=1 << 20)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        """A file's bytes, or bytes[start:end] of them (negative counts from the end, as in a slice)."""
        ref, size = self._file(path)
        lo, hi, _ = slice(start, end).indices(size)
        try:
            return self.tree.read(ref, lo, hi - lo) if hi > lo else b""
        except ImgfsError as e:
            raise OSError(str(e)) from None
