"""docs/API.md says only what is true: every name it documents exists, on real objects, and its examples run."""

from __future__ import annotations

import importlib
import re

import pytest

import imgfs
import imgfs.changes
from conftest import IMAGES, REPO

DOC = (REPO / "docs" / "API.md").read_text(encoding="utf-8")
REFERENCE = DOC[DOC.index("## Reference"):DOC.index("## fsspec")]
SEED = str(IMAGES / "seed.docker-oci.tar")


def _resolve(dotted: str) -> object:
    """imgfs.a.b.c: the module or attribute it names (AttributeError / ImportError if there is none)."""
    parts = dotted.split(".")
    obj: object = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i + 1]))
    return obj


def _terms() -> list[tuple[str, str, str]]:
    """(term, its parenthesis, its text) of each entry of the Reference."""
    out = []
    for block in re.split(r"\n\n+", REFERENCE):
        m = re.match(r"`([^`]+)`(?: \(([^)]*)\))?\n: (.*)", block, re.S)
        if m:
            out.append((m[1], m[2] or "", m[3]))
    return out


@pytest.fixture(scope="module")
def objects():
    """A real object of every class the Reference describes."""
    with imgfs.open_archive(SEED, use_cache=False) as archive:
        image = archive.image()
        layer = image.find_layer("echo trace")
        tree = image.merged()
        (result,) = imgfs.changes.layer_changes(image, [layer.position])
        yield {"Archive": archive, "Image": image, "Layer": layer, "MemberIndex": layer.index(), "Tree": tree,
               "Entry": tree.entry("/app/trace.log"), "Change": result.changes[0], "Totals": result.totals}


def test_the_reference_describes_what_it_should():
    terms = [t for t, _, _ in _terms()]
    assert {"Archive", "Image", "Layer", "MemberIndex", "Tree", "Entry", "Change", "Totals"} <= set(terms)
    assert any(t.startswith("imgfs.open_archive(") for t in terms)


def test_every_dotted_name_in_the_document_exists():
    names = set(re.findall(r"`(imgfs(?:\.[A-Za-z_]\w*)+)", DOC))
    assert "imgfs.TruncatedError" in names and "imgfs.changes.ASPECTS" in names
    for name in sorted(names):
        _resolve(name)


def test_every_attribute_of_every_class_exists_on_a_real_object(objects):
    for term, paren, text in _terms():
        if term.startswith("imgfs."):
            continue
        obj = objects[term]  # a class the Reference describes must be in the fixture above
        for dotted in re.findall(r"`(imgfs(?:\.\w+)+)`", paren):
            assert isinstance(obj, _resolve(dotted)), (term, dotted)  # type: ignore[arg-type]
        attrs = re.findall(r"`\.([A-Za-z_]\w*)", text)
        assert attrs, term
        missing = [a for a in attrs if not hasattr(obj, a)]
        assert not missing, (term, missing)


def test_the_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC, re.S)
    assert len(blocks) == 2
    for code in blocks:
        code = code.replace('"image.tar"', repr(SEED)).replace('"strace -o"', '"echo trace"')
        exec(compile(code, "docs/API.md", "exec"), {})
    assert (tmp_path / "trace.log").read_bytes() == b"trace\n"
    assert "/app/trace.log" in capsys.readouterr().out
