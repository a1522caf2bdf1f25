"""imgfs: look inside a saved container image (docker save, podman save, OCI archive) without Docker."""

from .archive import Archive, Image, Layer, open_archive
from .errors import FormatError, ImgfsError, NotFoundError, SelectionError, TruncatedError
from .tree import Entry, Tree

__version__ = "0.1.0"
__all__ = ["Archive", "Entry", "FormatError", "Image", "ImgfsError", "Layer", "NotFoundError",
           "SelectionError", "Tree", "TruncatedError", "open_archive"]
