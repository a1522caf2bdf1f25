"""`imgfs mount` / `imgfs umount`: the thin wrappers over imgfs.fuse, in a real background mount."""

from __future__ import annotations

import hashlib
import os

from clihelp import assert_one_line_error, run
from conftest import IMAGES
from truthlib import load_truth

SEED = IMAGES / "seed.docker-oci.tar"


def test_mount_read_umount(capsysbinary, tmp_path, need_fuse):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = run(capsysbinary, "mount", SEED, mnt)
    assert res.rc == 0, res.err
    try:
        assert sorted(os.listdir(mnt / "layers"))[-1] == "4 RUN sh -c 'echo trace > \u2215app\u2215trace.log'"
        truth = load_truth("seed.rootfs.umoci.jsonl")
        data = (mnt / "merged/app/conf/app.toml").read_bytes()
        assert hashlib.sha256(data).hexdigest() == truth["/app/conf/app.toml"]["sha256"]
        assert os.readlink(mnt / "merged/app/config-link") == "conf/app.toml"
        # the CLI reads the same archive while it is mounted
        assert run(capsysbinary, "cat", SEED, "/app/trace.log").out == (mnt / "merged/app/trace.log").read_bytes()
    finally:
        res = run(capsysbinary, "umount", mnt)
    assert res.rc == 0, res.err
    assert os.listdir(mnt) == []
    assert_one_line_error(run(capsysbinary, "umount", mnt), "not mounted")


def test_mount_errors_are_one_line(capsysbinary, tmp_path, need_fuse):
    assert_one_line_error(run(capsysbinary, "mount", SEED, tmp_path / "missing"), "does not exist")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert_one_line_error(run(capsysbinary, "mount", tmp_path / "nope.tar", mnt), "nope.tar")
    assert_one_line_error(run(capsysbinary, "mount", IMAGES / "multi.docker-oci.tar", mnt, "--image", "nginx"),
                          "nginx")
    for bad, said in (("umask=xyz", "octal"), ("uid=-1", "out of range"), ("rw", "read-only")):
        assert_one_line_error(run(capsysbinary, "mount", SEED, mnt, "-o", bad), said, rc=2)  # usage errors
    assert not os.path.ismount(mnt)
    assert_one_line_error(run(capsysbinary, "umount", tmp_path / "missing"), "does not exist")
