"""`imgfs extract` on the real fixtures: what lands on disk equals the truth (modes, mtimes, links, owners)."""

from __future__ import annotations

import os

import pytest

from clihelp import assert_one_line_error, run
from conftest import IMAGES
from truthlib import diff, image_truth, listing_from_dir, portable


@pytest.mark.parametrize("name", ["seed.docker-oci.tar", "links.docker-legacy.tar", "links.skopeo-oci-zstd.tar",
                                  "meta.skopeo-oci-gzip.tar", "whiteout.podman-oci.tar", "multistage.docker-oci.tar"])
def test_extract_whole_rootfs_equals_truth(capsysbinary, tmp_path, name):
    out = tmp_path / "out"
    res = run(capsysbinary, "extract", IMAGES / name, "/", "-o", out)
    assert res.rc == 0, res.err
    assert "extracted" in res.err and res.out == b""
    assert diff(portable(image_truth(name)), portable(listing_from_dir(out))) == []


def test_extract_directory_keeps_its_path_and_links(capsysbinary, tmp_path):
    out = tmp_path / "out"
    res = run(capsysbinary, "extract", IMAGES / "links.docker-oci.tar", "/srv/dir", "/srv/data", "-o", out)
    assert res.rc == 0, res.err
    want = {p: r for p, r in image_truth("links.docker-oci.tar").items() if p.startswith(("/srv/dir/", "/srv/data/"))
            or p in ("/srv/dir", "/srv/data")}
    del want["/srv/data/orig.txt"]["nlink"]  # its other link, /srv/hl-to-lower, was not asked for
    got = {p: r for p, r in listing_from_dir(out).items() if p not in ("/", "/srv")}
    assert diff(want, got) == []
    a, b = os.stat(out / "srv/data/multi-hl1"), os.stat(out / "srv/dir/multi-hl2")
    assert a.st_ino == b.st_ino and a.st_nlink == 3
    assert os.readlink(out / "srv/dir/rel-link") == "../data/orig.txt"
    assert os.readlink(out / "srv/dir/self") == "."


def test_extract_single_file_through_symlinked_parent(capsysbinary, tmp_path):
    res = run(capsysbinary, "extract", IMAGES / "links.docker-oci.tar", "/srv/dir-link-rel/sub/g.txt", "-o", tmp_path)
    assert res.rc == 0, res.err
    assert (tmp_path / "srv/dir/sub/g.txt").read_bytes() == b"sub\n"
    assert not (tmp_path / "srv/dir-link-rel").exists()


def test_extract_symlink_itself_or_its_target(capsysbinary, tmp_path):
    seed = IMAGES / "seed.docker-oci.tar"
    assert run(capsysbinary, "extract", seed, "/app/config-link", "-o", tmp_path / "a").rc == 0
    assert os.readlink(tmp_path / "a/app/config-link") == "conf/app.toml"
    assert run(capsysbinary, "extract", seed, "/app/config-link/", "-o", tmp_path / "b").rc == 0
    assert (tmp_path / "b/app/conf/app.toml").read_text().startswith('name = "seed"')


def test_extract_from_one_layer(capsysbinary, tmp_path):
    res = run(capsysbinary, "extract", IMAGES / "whiteout.docker-oci.tar", "/", "--layer", "1", "-o", tmp_path)
    assert res.rc == 0, res.err
    assert (tmp_path / "etc/group").exists() and (tmp_path / "bin/vi").is_symlink()
    assert not any(n.startswith(".wh.") for n in os.listdir(tmp_path))


def test_extract_twice_overwrites(capsysbinary, tmp_path):
    seed = IMAGES / "seed.docker-oci.tar"
    assert run(capsysbinary, "extract", seed, "/app", "-o", tmp_path).rc == 0
    (tmp_path / "app/trace.log").write_text("changed")
    res = run(capsysbinary, "extract", seed, "/app", "-o", tmp_path, "-q")
    assert res.rc == 0 and res.err == ""
    assert (tmp_path / "app/trace.log").read_text() == "trace\n"


def test_extract_errors(capsysbinary, tmp_path):
    seed = IMAGES / "seed.docker-oci.tar"
    assert_one_line_error(run(capsysbinary, "extract", seed, "/nope", "-o", tmp_path / "x"), "/nope", "no such file")
    assert not (tmp_path / "x").exists()
    (tmp_path / "file").write_text("")
    assert_one_line_error(run(capsysbinary, "extract", seed, "/app", "-o", tmp_path / "file"),
                          f"-o {tmp_path / 'file'}: exists and is not a directory", rc=2)
    res = run(capsysbinary, "extract", seed, "/app")
    assert res.rc == 2 and "-o" in res.err and "Traceback" not in res.err
