"""`imgfs verify` (digests of config, manifest, blobs, diff_ids) and `imgfs cache` / --cache-dir / --no-cache."""

from __future__ import annotations

import json
import shutil

import pytest

from clihelp import assert_one_line_error, run
from conftest import IMAGES
from imgfs.cli import main


@pytest.mark.parametrize("name", ["seed.docker-oci.tar", "seed.skopeo-oci-zstd.tar", "seed.docker-legacy.tar.gz"])
def test_verify_passes_on_good_archives(capsysbinary, name):
    res = run(capsysbinary, "verify", IMAGES / name)
    assert res.rc == 0, res.err
    rows = [line.split("\t") for line in res.lines]
    assert {r[1] for r in rows} == {"OK"}
    assert sum(r[2].endswith("diff_id") for r in rows) == 4
    assert all(r[3] == r[4] for r in rows)
    assert res.err == f"imgfs: {IMAGES / name}: all {len(rows)} checks passed\n"


def test_verify_every_image_or_one(capsysbinary):
    doc = run(capsysbinary, "verify", IMAGES / "seed.oci-index.tar", "--json").json()
    assert doc["ok"] is True
    assert [(i["platform"], i["ok"]) for i in doc["images"]] == [("linux/amd64", True), ("linux/arm64/v8", True)]
    doc = run(capsysbinary, "verify", IMAGES / "multi.docker-oci.tar", "--image", "whiteout", "--json").json()
    (img,) = doc["images"]
    assert img["label"] == "whiteout:latest" and len([c for c in img["checks"] if "diff_id" in c["what"]]) == 6


def test_verify_finds_a_flipped_byte(capsysbinary, tmp_path):
    bad = tmp_path / "seed.tar"
    shutil.copyfile(IMAGES / "seed.docker-oci.tar", bad)
    # /app/README.txt lives in layer 3: change one byte of its content in place
    data = bad.read_bytes()
    readme = run(capsysbinary, "cat", IMAGES / "seed.docker-oci.tar", "/app/README.txt").out
    at = data.index(readme)
    with open(bad, "r+b") as fh:
        fh.seek(at)
        fh.write(bytes([data[at] ^ 0x20]))
    res = run(capsysbinary, "verify", bad)
    assert res.rc == 1
    failed = [line.split("\t")[2] for line in res.lines if line.split("\t")[1] == "FAILED"]
    assert failed == ["layer 3 diff_id"]
    assert res.err.splitlines()[-1] == f"imgfs: {bad}: 1 of 6 checks failed"


def test_cache_dir_no_cache_and_clear(capsysbinary, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    seed = IMAGES / "seed.docker-oci.tar"
    capsysbinary.readouterr()
    assert main(["layers", str(seed), "--no-cache", "--cache-dir", str(cache)]) == 0
    assert not cache.exists()
    assert main(["--cache-dir", str(cache), "layers", str(seed)]) == 0
    capsysbinary.readouterr()
    assert main(["cache", "--cache-dir", str(cache), "--json"]) == 0
    doc = json.loads(capsysbinary.readouterr().out)
    assert doc["path"] == str(cache) and doc["files"] > 0
    kinds = doc["kinds"]  # seed's 4 layers: indexes kept under their diff_ids, and where each blob points
    assert kinds["shared"]["files"] == kinds["ptr"]["files"] == 4 and "idx" not in kinds
    assert doc["bytes"] == sum(k["bytes"] for k in kinds.values())
    monkeypatch.setenv("IMGFS_CACHE_DIR", str(cache))
    assert main(["cache"]) == main(["cache", "info"]) == 0
    lines = capsysbinary.readouterr().out.decode().splitlines()
    half = len(lines) // 2  # info is the default action: both runs printed the same
    assert lines[-1] == f"{cache}\t{doc['files']}\t{doc['bytes']}" and lines[:half] == lines[half:]
    assert main(["cache", "clear"]) == 0
    assert b"freed" in capsysbinary.readouterr().err
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_unwritable_cache_only_warns(capsysbinary, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    seed = IMAGES / "seed.docker-oci.tar"
    res = run(capsysbinary, "--cache-dir", blocker / "sub", "cat", seed, "/app/trace.log")
    assert res.rc == 0 and res.out == b"trace\n"
    assert "warning: cache" in res.err and len(res.err.splitlines()) == 1


def test_verify_bad_archive_is_one_line(capsysbinary, tmp_path):
    bad = tmp_path / "x.tar"
    bad.write_bytes(b"\0" * 10)
    assert_one_line_error(run(capsysbinary, "verify", bad), str(bad))


def test_cache_clear_never_deletes_through_a_symlinked_v1(capsysbinary, tmp_path):
    victim = tmp_path / "precious"
    (victim / "idx").mkdir(parents=True)
    for n in range(3):
        (victim / "idx" / f"{n}.idx").write_bytes(b"keep me")
        (victim / f"{n}.txt").write_bytes(b"keep me too")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "v1").symlink_to(victim)
    capsysbinary.readouterr()
    assert main(["--cache-dir", str(cache), "cache", "clear"]) == 0
    assert main(["--cache-dir", str(cache), "layers", str(IMAGES / "seed.docker-oci.tar")]) == 0
    assert main(["--cache-dir", str(cache), "cache", "clear"]) == 0
    assert sorted(p.name for p in victim.rglob("*") if p.is_file()) == ["0.idx", "0.txt", "1.idx", "1.txt",
                                                                         "2.idx", "2.txt"]
    assert all(p.read_bytes().startswith(b"keep me") for p in victim.rglob("*") if p.is_file())


def test_verify_rebuilds_a_damaged_cached_gzip_index_and_says_so(capsysbinary, tmp_path):
    seed = IMAGES / "seed.skopeo-oci-gzip.tar"
    cache = tmp_path / "cache"
    capsysbinary.readouterr()
    assert main(["--cache-dir", str(cache), "cat", str(seed), "/app/trace.log"]) == 0
    own = sorted((cache / "v1" / "idx").glob("*.idx"))
    assert own, "gzip layers keep their index under where the blob sits"
    for f in own:
        data = bytearray(f.read_bytes())
        data[len(data) * 2 // 3] ^= 0x01
        f.write_bytes(bytes(data))
    capsysbinary.readouterr()
    assert main(["--cache-dir", str(cache), "verify", str(seed)]) == 0
    err = capsysbinary.readouterr().err.decode()
    assert err.count("is corrupt or does not fit; rebuilding it") == len(own), err
    assert main(["--cache-dir", str(cache), "cat", str(seed), "/app/trace.log"]) == 0
    cap = capsysbinary.readouterr()
    assert cap.out == b"trace\n" and cap.err == b""  # rebuilt by verify: whole again
