"""The read-only FUSE mount of an image archive.

Layout (one image; with several, one directory per image, named from its label, laid out the same):
  config.json     the image config, byte for byte
  manifest.json   the image manifest, byte for byte; a legacy docker-archive has none, so its entry of the
                  archive's manifest.json ({"Config", "RepoTags", "Layers", ...}) stands in, as JSON
  layers/<name>/  each layer as its tar holds it, whiteout markers included (bottom layer first: "1 ...")
  merged/         every layer applied, whiteouts honoured

Entries keep their owners and modes; the mounting user reads everything (no default_permissions), and
allow_other brings default_permissions so that others get exactly what the modes allow. libfuse (3 through
fuse3.py, or 2 through fusepy and fuse2.py) is loaded only when mounting, so the rest of imgfs works without it.
"""

from .mounting import describe_backend, load_backend, mount, umount

__all__ = ["describe_backend", "load_backend", "mount", "umount"]
