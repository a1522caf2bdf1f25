"""The read-only FUSE mount of an image archive: layers/<name>/, merged/, config.json, manifest.json.

fusepy (and with it libfuse 2) is imported only when mounting, so the rest of imgfs works without it.
"""

from .mounting import mount, umount

__all__ = ["mount", "umount"]
