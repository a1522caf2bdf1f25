"""`imgfs completion`: the scripts parse, know every subcommand and option, complete from the archive, and
work in a real bash and zsh at the keyboard (through tmux): quotes open and closed, names with spaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clihelp import CACHE, run
from conftest import IMAGES
from imgfs.cli import build_parser

SEED = str(IMAGES / "seed.docker-oci.tar")
MULTI = str(IMAGES / "multi.docker-oci.tar")
PROG = str(Path(sys.executable).parent / "imgfs")
LAYERS = ["1 Imported from -", "2 WORKDIR \u2215app", "3 COPY ctx\u2215 \u2215app\u2215",
          "4 RUN sh -c 'echo trace > \u2215app\u2215trace.log'"]
# The shared functions, driven as the shell would: the line before the cursor in, the candidates out.
DRIVER = {
    "bash": 'source "$1"; _imgfs_run "$2"; printf "%s\\n" "${_imgfs_reply[@]}"; '
            '[[ -z $_imgfs_want ]] || echo "[$_imgfs_want $_imgfs_cur]"',
    "zsh": 'source "$1"; _imgfs_zsh_run "$2"; printf "%s\\n" "${_imgfs_reply[@]}"; '
           '[[ -z $_imgfs_want ]] || echo "[$_imgfs_want $_imgfs_cur]"',
}


def _script(shell: str, folder: Path) -> Path:
    path = folder / f"imgfs.{shell}"
    path.write_text(subprocess.run([PROG, "completion", shell], capture_output=True, check=True, text=True).stdout)
    return path


@pytest.fixture(scope="module", params=["bash", "zsh"])
def complete(request, tmp_path_factory):
    """complete(*words) -> the candidates offered for the last word (`[files WORD]` for the shell's own)."""
    shell = request.param
    if shutil.which(shell) is None or not Path(PROG).exists():
        pytest.skip(f"{shell} or the imgfs script is not installed")
    folder = tmp_path_factory.mktemp("completion")
    script = _script(shell, folder)
    # compinit writes its .zcompdump to ZDOTDIR, not $HOME; imgfs uses the private test cache
    env = dict(os.environ, ZDOTDIR=str(folder), IMGFS_CACHE_DIR=CACHE)
    argv = [shell, "-c", DRIVER[shell]] if shell == "bash" else [shell, "-f", "-c", DRIVER[shell]]

    def run_it(*words: str) -> list[str]:
        line = " ".join([PROG, *words])
        res = subprocess.run([*argv, "driver", str(script), line], capture_output=True, text=True, timeout=60,
                             check=False, env=env)
        assert res.returncode == 0 and not res.stderr, res.stderr
        return [out for out in res.stdout.splitlines() if out]
    return run_it


def test_scripts_parse_and_cover_the_parser(capsysbinary):
    text = run(capsysbinary, "completion", "bash").text
    assert subprocess.run(["bash", "-n"], input=text, text=True, check=False).returncode == 0
    for name, sub in _subs().items():
        assert f"        {name}) echo '" in text
        for action in sub._actions:
            for opt in action.option_strings:
                assert opt in text
    zsh = run(capsysbinary, "completion", "zsh").text
    assert subprocess.run(["zsh", "-n"], input=zsh, text=True, check=False).returncode == 0
    assert "_imgfs_complete() {" in zsh and "compdef _imgfs_zsh imgfs" in zsh
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


def test_layer_names_from_the_archive_as_they_are(complete):
    assert complete("find", SEED, "--layer", "") == LAYERS  # unescaped: the shell quotes what it inserts
    assert complete("diff", "--json", SEED, "--layer", "2") == [LAYERS[1]]
    assert complete("diff", SEED, "--layer", "'4 RUN sh -c '\\''echo") == [LAYERS[3]]  # an open quote
    assert complete("diff", SEED, "--layer", '"3 C') == [LAYERS[2]]
    assert complete("diff", SEED, "--layer", "4\\ RUN\\ sh") == [LAYERS[3]]
    assert complete("cat", MULTI, "--image", "whiteout", "/x", "--layer", "6") == [
        "6 RUN echo reborn > \u2215data\u2215keep\u2215phoenix.txt"]


def test_a_layer_completes_from_a_piece_of_its_name(complete):
    assert complete("ls", SEED, "--layer", "ec") == [LAYERS[3]]
    assert complete("ls", SEED, "--layer", "app") == LAYERS[1:]
    assert complete("ls", SEED, "--layer=ec") == ["--layer=" + LAYERS[3]]
    assert complete("ls", SEED, "--layer", "nothing like it") == []


def test_images_and_paths_inside_the_image(complete):
    assert complete("ls", MULTI, "--image", "") == ["seed:latest", "whiteout:latest", "example.com/corpus/links:1.0"]
    assert complete("cat", SEED, "/app/co") == ["/app/conf/", "/app/config-link"]
    assert complete("extract", SEED, "a") == ["/app/"]
    assert complete("ls", MULTI, "--image", "whiteout", "/data/k") == ["/data/keep/"]


def test_paths_inside_the_image_honour_the_layer(complete):
    assert "/app/trace.log" in complete("ls", SEED, "/app/")
    assert complete("ls", SEED, "--layer", "3", "/app/") == ["/app/README.txt", "/app/bin/", "/app/conf/",
                                                            "/app/config-link"]
    assert complete("cat", SEED, "--layer", "'2 WORKDIR \u2215app'", "/") == ["/app/"]
    assert complete("cat", SEED, "--layer=COPY", "/app/c") == ["/app/conf/", "/app/config-link"]


def test_files_and_directories_are_left_to_the_shell(complete, tmp_path):
    assert complete("layers", str(IMAGES / "seed.docker-oci.tar.")) == [f"[files {IMAGES}/seed.docker-oci.tar.]"]
    assert complete("layers", "'my s") == ["[files my s]"]
    assert complete("extract", SEED, "/app", "-o", str(tmp_path) + "/") == [f"[dirs {tmp_path}/]"]
    assert complete("mount", SEED, "") == ["[dirs ]"]
    assert complete("--cache-dir", "x") == ["[dirs x]"]
    assert complete("layers", "--cache-dir", "a\\ b") == ["[dirs a b]"]


# -- at the keyboard -----------------------------------------------------------------------------
PROMPT = "imgfs-test$ "


class Terminal:
    """A shell in a tmux pane 200 columns wide: type, press Tab, read the screen."""

    def __init__(self, shell: str, folder: Path) -> None:
        self.socket = str(folder / "tmux")  # a socket in the test's folder: nothing is left behind in /tmp/tmux-*
        script = _script(shell, folder)
        env = {"PATH": f"{Path(PROG).parent}:/usr/bin:/bin", "HOME": str(folder), "IMGFS_CACHE_DIR": CACHE,
               "TERM": "xterm", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "ZDOTDIR": str(folder)}
        if shell == "bash":
            (folder / "rc").write_text(f"PS1='{PROMPT}'\nsource {script}\ncd {folder}\n")
            cmd = ["bash", "--noprofile", "--rcfile", str(folder / "rc"), "-i"]
        else:
            (folder / ".zshrc").write_text(f"autoload -U compinit && compinit -u -d {folder}/.zcompdump\n"
                                           f"source {script}\nPROMPT='{PROMPT}'\ncd {folder}\n")
            cmd = ["zsh", "-i"]
        self.tmux("new-session", "-d", "-x", "200", "-y", "40", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
                  *cmd)
        self.wait_for(lambda screen: screen.rstrip().endswith(PROMPT.rstrip()))

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-N")  # -N: trailing spaces kept (a completed word ends in one)

    def busy(self) -> bool:
        """Whether the shell is running anything (a completion runs imgfs, and prints nothing meanwhile)."""
        pid = self.tmux("display-message", "-p", "#{pane_pid}").strip()
        children = Path(f"/proc/{pid}/task/{pid}/children")
        return bool(children.exists() and children.read_text().strip())

    def wait_for(self, ok, timeout: float = 30) -> str:
        """The screen once `ok(screen)` holds, the shell runs nothing, and the screen has not changed for a moment."""
        end, last, since = time.monotonic() + timeout, None, time.monotonic()
        while time.monotonic() < end:
            now = self.screen()
            if now != last or self.busy():
                last, since = now, time.monotonic()
            elif ok(now) and time.monotonic() - since > 0.3:
                return now
            time.sleep(0.1)
        raise AssertionError(f"the terminal never settled:\n{last}")

    def fresh(self) -> None:
        """An empty command line on a cleared screen."""
        self.wait_for(lambda screen: True)
        self.tmux("send-keys", "C-u")
        self.tmux("send-keys", "C-l")
        self.wait_for(lambda screen: screen.strip() == PROMPT.strip())

    def tab(self, text: str, tabs: int = 1) -> tuple[str, list[str]]:
        """Type `text`, press Tab `tabs` times: the command line then, and the lines listed below it."""
        self.fresh()
        self.tmux("send-keys", "-l", text)
        for _ in range(tabs):
            self.tmux("send-keys", "Tab")
            self.wait_for(lambda screen: True)
        lines = [line for line in self.screen().splitlines() if line.strip()]
        return lines[0].removeprefix(PROMPT), lines[1:]

    def enter(self) -> list[str]:
        """Press Enter: the lines the command printed."""
        self.tmux("send-keys", "Enter")
        screen = self.wait_for(lambda s: s.rstrip().endswith(PROMPT.rstrip()) and s.count(PROMPT.strip()) > 1)
        return [line for line in screen.splitlines() if line.strip() and not line.startswith(PROMPT)]

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, check=False, timeout=30)


@pytest.fixture(scope="module", params=["bash", "zsh"])
def term(request, tmp_path_factory):
    shell = request.param
    if shutil.which("tmux") is None or shutil.which(shell) is None or not Path(PROG).exists():
        pytest.skip(f"tmux, {shell} or the imgfs script is not installed")
    folder = tmp_path_factory.mktemp(f"keyboard-{shell}")
    shutil.copyfile(SEED, folder / "my seed.tar")  # a name with a space
    t = Terminal(shell, folder)
    try:
        yield t
    finally:
        t.close()


def test_an_archive_name_with_a_space_completes_quoted_or_escaped(term):
    assert term.tab("imgfs ls my")[0] == "imgfs ls my\\ seed.tar "
    assert term.tab("imgfs ls 'my s")[0] == "imgfs ls 'my seed.tar' "
    assert term.tab('imgfs ls "my s')[0] == 'imgfs ls "my seed.tar" '


def test_a_layer_in_an_open_quote_completes_without_backslashes(term):
    line, _ = term.tab("imgfs cat 'my seed.tar' --layer '4")
    assert line == "imgfs cat 'my seed.tar' --layer '4 RUN sh -c '\\''echo trace > \u2215app\u2215trace.log'\\''' "
    term.tmux("send-keys", "-l", "/app/trace.log")
    assert term.enter() == ["trace"]  # the shell reads back exactly the layer's name
    assert term.tab('imgfs ls "my seed.tar" --layer "2')[0] == 'imgfs ls "my seed.tar" --layer "2 WORKDIR \u2215app" '


def test_layer_candidates_are_listed_as_they_are(term):
    _, listed = term.tab("imgfs ls 'my seed.tar' --layer ", tabs=2)
    shown = " ".join(listed)
    for name in LAYERS:
        assert name in shown
    assert "\\ " not in shown


def test_a_piece_of_a_layer_name_completes_and_runs(term):
    line, _ = term.tab("imgfs cat my\\ seed.tar --layer ec")
    escaped = "4\\ RUN\\ sh\\ -c\\ \\'echo\\ trace\\ \\>\\ \u2215app\u2215trace.log\\'"
    assert line == f"imgfs cat my\\ seed.tar --layer {escaped} "
    term.tmux("send-keys", "-l", "/app/trace.log")
    assert term.enter() == ["trace"]


def test_path_completion_at_the_keyboard_honours_the_layer(term):
    _, listed = term.tab("imgfs ls 'my seed.tar' --layer 3 /app/", tabs=2)
    assert listed and "README.txt" in listed[0] and "conf/" in listed[0] and "trace.log" not in " ".join(listed)
    _, listed = term.tab("imgfs ls 'my seed.tar' /app/", tabs=2)
    assert "trace.log" in " ".join(listed)
    line, _ = term.tab("imgfs cat 'my seed.tar' --layer -1 /app/t")
    assert line == "imgfs cat 'my seed.tar' --layer -1 /app/trace.log "
