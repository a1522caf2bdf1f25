"""Turn a fixture archive into the other places images lie in: an unpacked tar, an OCI layout, skopeo's dir:."""

from __future__ import annotations

import subprocess
from pathlib import Path

OCI_FORMATS = ("skopeo", "podman-oci", "oci")  # fixture formats that are OCI archives
DOCKER_FORMATS = ("docker-legacy", "docker-oci", "podman-docker")


def unpacked(archive: Path, dest: Path) -> Path:
    """`tar -x` of the archive into `dest` (GNU tar finds a gzip by itself), as the seed article does."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(dest)], check=True, capture_output=True)
    return dest


def skopeo(src: str, dest: str, *extra: str) -> None:
    """`skopeo copy`, failing the test with skopeo's own message."""
    res = subprocess.run(["skopeo", "copy", "-q", *extra, src, dest], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def oci_layout(archive: Path, dest: Path, ref: str = "tag") -> Path:
    """`skopeo copy --all oci-archive:F oci:DIR:ref` (every platform of an index)."""
    skopeo(f"oci-archive:{archive}", f"oci:{dest}:{ref}", "--all")
    return dest


def skopeo_dir(archive: Path, dest: Path) -> Path:
    """`skopeo copy docker-archive:F dir:DIR`: one image's manifest.json plus blobs named by their hex."""
    skopeo(f"docker-archive:{archive}", f"dir:{dest}")
    return dest
