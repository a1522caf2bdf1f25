"""Layer directory names: real created_by strings of BuildKit, the classic builder and buildah, and the edge cases."""

from __future__ import annotations

import json
import re
import tarfile

import pytest

from conftest import IMAGES, TRUTH
from imgfs.formats import layer_names

DIGEST = "sha256:" + "ab" * 32
SLASH = "\u2215"  # what a '/' in a command becomes in a file name


def fixture_commands() -> set[str]:
    """Every created_by in the fixtures: skopeo's configs in truth/ and Docker's own in the legacy archives."""
    out = set()
    for path in TRUTH.glob("*.image.json"):
        out |= {h["created_by"] for h in json.loads(path.read_text())["config"].get("history", []) if "created_by" in h}
    for path in IMAGES.glob("*.docker-legacy.tar"):
        with tarfile.open(path) as tf:
            for entry in json.load(tf.extractfile("manifest.json")):  # type: ignore[arg-type]
                cfg = json.load(tf.extractfile(entry["Config"]))  # type: ignore[arg-type]
                out |= {h["created_by"] for h in cfg.get("history", []) if "created_by" in h}
    return out


def name_of(created_by: str | None, digest: str = DIGEST, **entry: object) -> str:
    """The name of a one-layer image whose history entry has this created_by."""
    h = dict(entry)
    if created_by is not None:
        h["created_by"] = created_by
    names, _, _ = layer_names({"history": [h]}, [digest])
    return names[0]


def short_hashes(text: str) -> str:
    """Digests after file:/dir: cut to 8 hex digits (names may keep them whole or short)."""
    return re.sub(r"\b(file|dir|multi):([0-9a-f]{8})[0-9a-f]{56}\b", r"\1:\2", text)


# Real strings from the fixtures and the step each stands for (written from the builders' conventions, not from
# imgfs): BuildKit marks steps '# buildkit' and spells RUN; classic and buildah prefix '/bin/sh -c', with '#(nop)'
# for non-RUN steps (two spaces after it in the classic builder); build args come as a '|N K=V ...' prefix.
CASES = [
    ("RUN /bin/sh -c rm -rf /data/opaque && mkdir -p /data/opaque && echo new > /data/opaque/new.txt # buildkit",
     "RUN rm -rf /data/opaque && mkdir -p /data/opaque && echo new > /data/opaque/new.txt"),
    ("RUN /bin/sh -c sh -c 'echo trace > /app/trace.log' # buildkit", "RUN sh -c 'echo trace > /app/trace.log'"),
    ("COPY ctx/ /app/ # buildkit", "COPY ctx/ /app/"),
    ("COPY /out/ /opt/app/ # buildkit", "COPY /out/ /opt/app/"),
    ("WORKDIR /app", "WORKDIR /app"),
    ("EXPOSE map[8080/tcp:{}]", "EXPOSE map[8080/tcp:{}]"),
    ('RUN |2 VERSION=1.2.3 BUILD_DATE=2024-01-01 /bin/sh -c echo "${VERSION}" > /opt/app/VERSION # buildkit',
     'RUN echo "${VERSION}" > /opt/app/VERSION'),
    ("/bin/sh -c #(nop) WORKDIR /app", "WORKDIR /app"),
    ("/bin/sh -c #(nop) COPY dir:a52aebf64d41509a1a8bd3cc2c72e490f17f0ec6f4b176d51db62cde44838331 in /app/ ",
     "COPY dir:a52aebf64d41509a1a8bd3cc2c72e490f17f0ec6f4b176d51db62cde44838331 in /app/"),
    ("/bin/sh -c sh -c 'echo trace > /app/trace.log'", "RUN sh -c 'echo trace > /app/trace.log'"),
    ("/bin/sh -c #(nop)  ENV APP_HOME=/app GREETING=hello world", "ENV APP_HOME=/app GREETING=hello world"),
    ('/bin/sh -c #(nop)  CMD ["cat" "/app/trace.log"]', 'CMD ["cat" "/app/trace.log"]'),
    ("/bin/sh -c #(nop) ADD file:d7757ec0e982e3a7ada783aaea1e47afd256cfd327483784213b2ae98ec83f35 in /",
     "ADD file:d7757ec0e982e3a7ada783aaea1e47afd256cfd327483784213b2ae98ec83f35 in /"),
    ('/bin/sh -c #(nop) ENV APP_HOME=/app     GREETING="hello world"', 'ENV APP_HOME=/app GREETING="hello world"'),
    ("/bin/sh", "/bin/sh"),
]


def test_cases_are_real_fixture_strings() -> None:
    real = fixture_commands()
    assert real, "no fixtures"
    missing = [c for c, _ in CASES if c not in real]
    assert not missing


@pytest.mark.parametrize("created_by,step", CASES)
def test_real_created_by_names(created_by: str, step: str) -> None:
    want = "1 " + step.replace("/", SLASH)
    assert short_hashes(name_of(created_by)) == short_hashes(want)


def test_every_fixture_command_gives_a_clean_name() -> None:
    for cmd in fixture_commands():
        name = name_of(cmd)
        raw = name.encode("utf-8")
        assert len(raw) <= 255 and b"/" not in raw and b"\0" not in raw, name
        for noise in ("# buildkit", "#(nop)", f"{SLASH}bin{SLASH}sh -c", "  "):
            assert noise not in name, (cmd, name)
        assert not re.search(r"\|\d+ ", name), (cmd, name)


def test_long_command_is_cut_at_255_bytes() -> None:
    cmds = [c for c in fixture_commands() if len(c.encode()) > 300 and c.startswith("RUN /bin/sh -c ")]
    assert cmds
    for cmd in cmds:
        name = name_of(cmd)
        full = "1 RUN " + " ".join(cmd.removeprefix("RUN /bin/sh -c ").removesuffix(" # buildkit").split())
        full = full.replace("/", SLASH)
        assert 250 <= len(name.encode()) <= 255
        assert full.startswith(name)


@pytest.mark.parametrize("char", ["\u00e9", "\u2215", "\U0001f600"], ids=["2-byte", "3-byte", "4-byte"])
@pytest.mark.parametrize("shift", [0, 1, 2, 3])
def test_cut_falls_on_a_utf8_boundary(char: str, shift: int) -> None:
    cmd = "RUN " + "x" * shift + char * 200
    name = name_of(cmd)
    raw = name.encode("utf-8")
    assert len(raw) <= 255
    assert len(raw) > 255 - len(char.encode())  # no more than one character is dropped
    assert ("1 RUN " + "x" * shift + char * 200).startswith(name)


def test_prefix_width_follows_the_layer_count() -> None:
    for count, width in ((1, 1), (9, 1), (10, 2), (100, 3)):
        names, _, _ = layer_names({"history": [{"created_by": f"RUN s{n}"} for n in range(count)]},
                                  [f"sha256:{n:064x}" for n in range(count)])
        assert names[0] == "1".zfill(width) + " RUN s0"
        assert names[-1] == str(count) + f" RUN s{count - 1}"
        assert len(set(names)) == count


def test_empty_layers_take_no_name_rule_1() -> None:
    hist = [{"created_by": "FROM x", "empty_layer": True}, {"created_by": "RUN a"},
            {"created_by": "ENV k=v", "empty_layer": True}, {"created_by": "RUN b"}, {"created_by": "CMD c",
                                                                                     "empty_layer": True}]
    names, cmds, warnings = layer_names({"history": hist}, [DIGEST, DIGEST])
    assert names == ["1 RUN a", "2 RUN b"]  # the same diff_id twice (rule 3) still gives two names
    assert cmds == ["RUN a", "RUN b"] and warnings == []


@pytest.mark.parametrize("created_by", ["RUN a\0b", "RUN a/b", "COPY / /x\0/", "\0/\0"])
def test_nul_and_slash_never_reach_the_name(created_by: str) -> None:
    name = name_of(created_by)
    assert "\0" not in name and "/" not in name
    assert name.startswith("1")


@pytest.mark.parametrize("created_by", ["", "   ", ".", "..", "\0", "/", "# buildkit"])
def test_degenerate_commands_still_give_valid_names(created_by: str) -> None:
    name = name_of(created_by)
    assert name.startswith("1") and name not in (".", "..")
    assert "/" not in name and "\0" not in name and len(name.encode()) <= 255


def test_base_layer_is_named_from_its_comment() -> None:
    assert name_of(None, comment="Imported from -") == "1 Imported from -"


def test_history_shorter_than_layers_names_the_rest_by_digest() -> None:
    digests = ["sha256:" + c * 64 for c in "abc"]
    names, cmds, warnings = layer_names({"history": [{"created_by": "RUN only"}]}, digests)
    assert names[0] == "1 RUN only"
    assert "b" * 12 in names[1] and "c" * 12 in names[2]
    assert cmds[1:] == [None, None]
    assert len(warnings) == 1


def test_history_longer_than_layers_warns() -> None:
    hist = [{"created_by": f"RUN {n}"} for n in range(4)]
    names, _, warnings = layer_names({"history": hist}, ["sha256:" + "a" * 64, "sha256:" + "b" * 64])
    assert names == ["1 RUN 0", "2 RUN 1"]
    assert len(warnings) == 1


@pytest.mark.parametrize("history", [None, [], "nonsense", {"a": 1}, [1, "x", None]])
def test_no_usable_history_names_every_layer_by_digest(history: object) -> None:
    digests = ["sha256:" + c * 64 for c in "de"]
    cfg = {} if history is None else {"history": history}
    names, cmds, warnings = layer_names(cfg, digests)
    assert ["d" * 12 in names[0], "e" * 12 in names[1]] == [True, True]
    assert cmds == [None, None] and warnings


def test_missing_digest_still_gives_distinct_names() -> None:
    names, _, _ = layer_names({}, [None, None, ""])
    assert len(set(names)) == 3 and all(n[0].isdigit() for n in names)


def test_build_arg_value_with_spaces() -> None:
    assert name_of("RUN |1 MSG=hello world /bin/sh -c echo hi # buildkit") == "1 RUN echo hi"


@pytest.mark.parametrize("args", ["|1 A=1", "|2 A=1 B=2", "|3 A= B=x=y C=/p"])
def test_build_arg_prefixes_are_dropped(args: str) -> None:
    assert name_of(f"RUN {args} /bin/sh -c make all # buildkit") == "1 RUN make all"
    assert name_of(f"{args} /bin/sh -c make all") == "1 RUN make all"  # the classic builder's spelling


def test_lone_surrogate_in_created_by() -> None:
    name = name_of("RUN echo \ud800 done")
    name.encode("utf-8")  # a file name FUSE and the CLI can print
    assert name.startswith("1 RUN echo")
