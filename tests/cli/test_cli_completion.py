"""`imgfs completion`: the scripts parse, know every subcommand and option, and complete from the archive."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clihelp import CACHE, run
from conftest import IMAGES
from imgfs.cli import build_parser

SEED = str(IMAGES / "seed.docker-oci.tar")
MULTI = str(IMAGES / "multi.docker-oci.tar")
PROG = str(Path(sys.executable).parent / "imgfs")
DRIVER = {
    "bash": 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _imgfs; printf "%s\\n" "${COMPREPLY[@]}"',
    # what zsh's bashcompinit does around the function: sh emulation (arrays count from 0), PREFIX = the word
    "zsh": 'source "$1"; shift; PREFIX=${argv[-1]}; emulate -L sh; setopt kshglob noshglob braceexpand; '
           'local -a COMP_WORDS COMPREPLY; '
           'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _imgfs; printf "%s\\n" "${COMPREPLY[@]}"',
}


@pytest.fixture(scope="module", params=["bash", "zsh"])
def complete(request, tmp_path_factory):
    """complete(*words) -> the candidates the shell's completion function offers for the last word."""
    shell = request.param
    if shutil.which(shell) is None or not Path(PROG).exists():
        pytest.skip(f"{shell} or the imgfs script is not installed")
    script = tmp_path_factory.mktemp("completion") / f"imgfs.{shell}"
    script.write_text(subprocess.run([PROG, "completion", shell], capture_output=True, check=True, text=True).stdout)
    argv = [shell, "-c", DRIVER[shell], "driver", str(script)] if shell == "bash" else \
        [shell, "-f", "-c", DRIVER[shell], "driver", str(script)]
    # compinit writes its .zcompdump to ZDOTDIR, not $HOME; imgfs uses the private test cache
    env = dict(os.environ, ZDOTDIR=str(script.parent), IMGFS_CACHE_DIR=CACHE)

    def run_it(*words: str) -> list[str]:
        res = subprocess.run([*argv, PROG, *words], capture_output=True, text=True, timeout=60, check=False, env=env)
        assert res.returncode == 0, res.stderr
        return [line for line in res.stdout.splitlines() if line]
    return run_it


def test_scripts_parse_and_cover_the_parser(capsysbinary):
    text = run(capsysbinary, "completion", "bash").text
    assert subprocess.run(["bash", "-n"], input=text, text=True, check=False).returncode == 0
    for name, sub in _subs().items():
        assert f"        {name}) echo '" in text
        for action in sub._actions:
            for opt in action.option_strings:
                assert opt in text
    assert run(capsysbinary, "completion", "zsh").text.endswith(text)
    assert run(capsysbinary, "completion", "fish").rc == 2


def _subs() -> dict:
    parser = build_parser()
    return next(a.choices for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))


def test_subcommands_and_options(complete):
    assert complete("") == list(_subs())
    assert complete("e") == ["extract"]
    assert "--layer" in complete("find", SEED, "--") and "--names" in complete("layers", SEED, "--n")
    assert complete("find", SEED, "--type", "") == ["f", "d", "l", "c", "b", "p"]
    assert complete("completion", "") == ["bash", "zsh"]
    assert complete("cache", "") == ["info", "clear"]
    assert complete("--cache-dir", "/tmp", "fi") == ["find"]  # a global option's value is not the subcommand


def test_layer_names_from_the_archive(complete):
    assert complete("find", SEED, "--layer", "") == [
        "1\\ Imported\\ from\\ -", "2\\ WORKDIR\\ \u2215app", "3\\ COPY\\ ctx\u2215\\ \u2215app\u2215",
        "4\\ RUN\\ sh\\ -c\\ \\'echo\\ trace\\ \\>\\ \u2215app\u2215trace.log\\'"]
    assert complete("diff", "--json", SEED, "--layer", "2") == ["2\\ WORKDIR\\ \u2215app"]
    assert complete("cat", MULTI, "--image", "whiteout", "/x", "--layer", "6") == [
        "6\\ RUN\\ echo\\ reborn\\ \\>\\ \u2215data\u2215keep\u2215phoenix.txt"]


def test_images_and_paths_inside_the_image(complete):
    assert complete("ls", MULTI, "--image", "") == ["seed:latest", "whiteout:latest", "example.com/corpus/links:1.0"]
    assert complete("cat", SEED, "/app/co") == ["/app/conf/", "/app/config-link"]
    assert complete("extract", SEED, "a") == ["/app/"]
    assert complete("ls", MULTI, "--image", "whiteout", "/data/k") == ["/data/keep/"]


def test_files_and_directories(complete, tmp_path):
    assert complete("layers", str(IMAGES / "seed.docker-oci.tar.")) == [str(IMAGES / "seed.docker-oci.tar.gz")]
    (tmp_path / "sub").mkdir()
    (tmp_path / "file").write_text("")
    assert complete("extract", SEED, "/app", "-o", str(tmp_path) + "/") == [str(tmp_path / "sub")]
    assert complete("mount", SEED, str(tmp_path) + "/") == [str(tmp_path / "sub")]
    assert complete("--cache-dir", str(tmp_path) + "/") == [str(tmp_path / "sub")]
    assert complete("layers", "--cache-dir", str(tmp_path) + "/") == [str(tmp_path / "sub")]
