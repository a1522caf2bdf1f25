"""The first pass over a large gzip stream runs in a child that imports only the installed imgfs."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
from pathlib import Path

from imgfs.tarindex.compressed import SMALL_GZIP
from tarmaker import ArchiveBuilder, F, tar_of


def big_gzip_archive(path: Path) -> Path:
    """A whole-archive .tar.gz larger than SMALL_GZIP (random bytes do not compress), so gzpass runs."""
    b = ArchiveBuilder()
    layer = tar_of([F("noise.bin", random.Random(3).randbytes(SMALL_GZIP + (1 << 20))), F("etc/hello", b"hi\n")])
    b.oci_index([b.oci_image([layer])])
    path.write_bytes(gzip.compress(b.tar(), compresslevel=1))
    assert path.stat().st_size >= SMALL_GZIP
    return path


def test_a_planted_imgfs_package_in_the_working_directory_never_runs(tmp_path: Path) -> None:
    archive = big_gzip_archive(tmp_path / "big.tar.gz")
    work = tmp_path / "work"
    (work / "imgfs" / "tarindex").mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    plant = f"open({str(marker)!r}, 'w').write('ran')\n"
    for init in (work / "imgfs" / "__init__.py", work / "imgfs" / "tarindex" / "__init__.py"):
        init.write_text(plant)
    (work / "imgfs" / "tarindex" / "gzpass.py").write_text(plant)
    cache = tmp_path / "cache"
    imgfs_cmd = Path(sys.executable).with_name("imgfs")  # the installed entry point, as a user runs it
    proc = subprocess.run([str(imgfs_cmd), "--cache-dir", str(cache), "cat", str(archive), "/etc/hello"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"
    assert not marker.exists(), "code from the working directory ran"
    assert list(cache.rglob("*.gzi")), "the first pass ran in its child and left its seek points"
