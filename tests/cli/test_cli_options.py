"""The command line as Unix tools read it: options before, between or after the positional arguments, and
values that cannot mean anything refused as usage errors."""

from __future__ import annotations

import argparse

import pytest

from clihelp import CACHE, assert_one_line_error, run
from conftest import IMAGES
from imgfs.cli import build_parser

SEED = str(IMAGES / "seed.docker-oci.tar")
# Every subcommand, said twice: options first, then options after (or between) the positional arguments.
ORDERS = {
    "images": (["--json", SEED], [SEED, "--json"]),
    "attestations": (["--json", SEED], [SEED, "--json"]),
    "layers": (["--names", "--platform", "linux/amd64", SEED], [SEED, "--names", "--platform", "linux/amd64"]),
    "diff": (["--layer", "3", "--json", SEED], [SEED, "--json", "--layer", "3"]),
    "ls": ([SEED, "-l", "--layer", "3", "/app"], [SEED, "/app", "-l", "--layer", "3"]),
    "find": (["--name", "*.toml", "--json", SEED], [SEED, "--json", "--name", "*.toml"]),
    "cat": (["--layer", "-1", SEED, "/app/trace.log"], [SEED, "/app/trace.log", "--layer", "-1"]),
    "extract": (["-o", "OUT", SEED, "/app", "/etc/passwd"], [SEED, "/app", "-o", "OUT", "/etc/passwd"]),
    "verify": (["--json", "--image", "seed", SEED], [SEED, "--image", "seed", "--json"]),
    "cache": (["--json", "info"], ["info", "--json"]),
    "mount": (["-f", "--image", "seed", SEED, "MNT"], [SEED, "MNT", "--image", "seed", "-f"]),
    "umount": (["--lazy", "MNT"], ["MNT", "--lazy"]),
    "completion": (["-q", "bash"], ["bash", "-q"]),
}


def _subcommands() -> list[str]:
    parser = build_parser()
    return list(next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)))


def test_every_subcommand_is_tried_both_ways():
    assert sorted(ORDERS) == sorted(_subcommands())


@pytest.mark.parametrize("sub", sorted(ORDERS))
def test_options_before_and_after_positionals_parse_alike(sub):
    first, last = ORDERS[sub]
    a, b = build_parser().parse_args([sub, *first]), build_parser().parse_args([sub, *last])
    assert a == b
    assert vars(a).get("archive", SEED) == SEED


@pytest.mark.parametrize("sub", ["images", "attestations", "layers", "diff", "ls", "find", "cat", "verify"])
def test_options_before_and_after_positionals_print_alike(capsysbinary, sub):
    first, last = ORDERS[sub]
    a, b = run(capsysbinary, sub, *first), run(capsysbinary, sub, *last)
    assert (a.rc, a.err) == (0, "") or sub == "verify" and a.rc == 0, a.err
    assert a.out == b.out and a.out


def test_ls_takes_the_path_after_its_options(capsysbinary):
    for opts in (["-l"], ["--layer", "3"], ["--json"]):
        res = run(capsysbinary, "ls", SEED, *opts, "/app")
        assert res.rc == 0, res.err
        assert ("conf" in res.text) and "etc" not in res.lines
    assert run(capsysbinary, "ls", SEED, "--layer", "3", "/app").lines == [
        "README.txt", "bin", "conf", "config-link"]


def test_extract_takes_paths_on_both_sides_of_its_options(capsysbinary, tmp_path):
    res = run(capsysbinary, "extract", SEED, "/app/README.txt", "-o", tmp_path, "/etc/passwd")
    assert res.rc == 0, res.err
    assert (tmp_path / "app/README.txt").is_file() and (tmp_path / "etc/passwd").is_file()


@pytest.mark.parametrize("argv, says", [
    (["cat", SEED, ""], "argument PATH: an empty path names nothing"),
    (["ls", SEED, ""], "argument PATH: an empty path names nothing"),
    (["extract", SEED, "", "-o", CACHE], "argument PATH: an empty path names nothing"),
    (["ls", SEED, "--layer", ""], "argument --layer: an empty layer selector names nothing"),
    (["ls", SEED, "--image", ""], "argument --image: an empty image reference names nothing"),
    (["ls", SEED, "--platform", ""], "argument --platform: an empty platform names nothing"),
    (["mount", SEED, "MNT", "--image", ""], "argument --image: an empty image reference names nothing"),
    (["layers", ""], "argument ARCHIVE: an empty archive path names nothing"),
])
def test_empty_values_are_usage_errors(capsysbinary, argv, says):
    res = run(capsysbinary, *argv)
    assert res.rc == 2 and res.out == b"" and "Traceback" not in res.err
    assert res.err.splitlines()[-1].endswith(says), res.err


def test_selection_errors_name_the_flags_on_the_command_line(capsysbinary):
    multi = IMAGES / "multi.docker-oci.tar"
    assert_one_line_error(run(capsysbinary, "ls", multi), "choose one by --image: seed:latest")
    assert_one_line_error(run(capsysbinary, "ls", multi, "--image", "nope"), "no image matches --image 'nope'")
    assert_one_line_error(run(capsysbinary, "ls", SEED, "--platform", "x/y"), "no image for --platform 'x/y'")
    assert_one_line_error(run(capsysbinary, "ls", SEED, "--layer", "9"), "--layer 9: the image has 4 layers")
    assert_one_line_error(run(capsysbinary, "ls", SEED, "--layer", "nope"), "--layer 'nope' matches no layer")
