"""`imgfs images` and `imgfs layers` on every fixture format, plain and --json, checked against the truth."""

from __future__ import annotations

import json

import pytest

from clihelp import run
from conftest import IMAGES, TRUTH, archives


def _chains(entry: dict) -> set[tuple[tuple[str, ...], str | None]]:
    """The distinct (diff_ids, platform) images an INDEX.json archive entry describes."""
    out = set()
    for im in entry["images"]:
        p = im.get("platform")
        plat = "/".join(x for x in (p["os"], p["architecture"], p.get("variant")) if x) if p else None
        out.add((tuple(im["diff_ids"]), plat))
    return out


def _layer_truth(name: str) -> list[dict]:
    """The per-layer truth lines of an archive, for the first image in it (manifest.json source first)."""
    with open(TRUTH / name, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    def key(r: dict) -> tuple:
        return r["image"], r.get("source"), r.get("manifest_digest"), r.get("config_digest")
    return [r for r in rows if key(r) == key(rows[0])]


@pytest.mark.parametrize("name", archives())
def test_images_json_lists_every_image_of_the_archive(capsysbinary, index, name):
    res = run(capsysbinary, "images", IMAGES / name, "--json")
    assert res.rc == 0, res.err
    doc = res.json()
    got = {(tuple(i["diff_ids"]), i["platform"]) for i in doc["images"]}
    want = _chains(index[name])
    assert {c for c, _ in got} == {c for c, _ in want}
    assert len(doc["images"]) == len({c for c, _ in want})
    for c, plat in want:
        if plat:
            assert (c, plat) in got
    for i in doc["images"]:
        assert i["layers"] == len(i["diff_ids"])


@pytest.mark.parametrize("name", ["seed.docker-oci.tar", "seed.docker-legacy.tar", "seed.podman-docker.tar"])
def test_images_plain_is_tab_separated_with_refs(capsysbinary, name):
    res = run(capsysbinary, "images", IMAGES / name)
    assert res.rc == 0
    (line,) = res.lines
    fields = line.split("\t")
    assert len(fields) == 6
    assert "seed:latest" in fields[1]
    assert fields[5] == "4"
    assert fields[3].startswith("sha256:")


def test_images_of_oci_index_shows_both_platforms(capsysbinary):
    res = run(capsysbinary, "images", IMAGES / "seed.oci-index.tar")
    assert res.rc == 0
    platforms = [line.split("\t")[4] for line in res.lines]
    assert platforms == ["linux/amd64", "linux/arm64/v8"]
    res = run(capsysbinary, "images", IMAGES / "seed.oci-index.tar", "--platform", "linux/arm64")
    assert [line.split("\t")[4] for line in res.lines] == ["linux/arm64/v8"]


def test_images_of_multi_image_archive(capsysbinary):
    res = run(capsysbinary, "images", IMAGES / "multi.docker-legacy.tar", "--json")
    labels = sorted(i["label"] for i in res.json()["images"])
    assert labels == ["example.com/corpus/links:1.0", "seed:latest", "whiteout:latest"]


@pytest.mark.parametrize("name", [n for n in archives() if not n.startswith("multi.")])
def test_layers_json_matches_layer_truth(capsysbinary, index, name):
    args = ["--platform", "linux/amd64"] if "oci-index" in name else []
    res = run(capsysbinary, "layers", IMAGES / name, "--json", *args)
    assert res.rc == 0, res.err
    layers = res.json()["layers"]
    truth = _layer_truth(index[name]["layers_truth"])
    assert [la["diff_id"] for la in layers] == [t["diff_id"] for t in truth]
    assert [la["entries"] for la in layers] == [len(t["members"]) for t in truth]
    assert [la["number"] for la in layers] == list(range(1, len(truth) + 1))
    assert [la["size"] for la in layers] == [t["blob_size"] for t in truth]
    for la, t in zip(layers, truth, strict=True):
        if t.get("created_by"):
            assert la["created_by"] == t["created_by"]
        assert la["name"].startswith(f"{la['number']} ")


def test_layers_plain_rows_bottom_to_top(capsysbinary):
    res = run(capsysbinary, "layers", IMAGES / "seed.docker-oci.tar")
    assert res.rc == 0
    rows = [line.split("\t") for line in res.lines]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert rows[3][1] == "4 RUN sh -c 'echo trace > \u2215app\u2215trace.log'"
    assert rows[3][9] == "RUN /bin/sh -c sh -c 'echo trace > /app/trace.log' # buildkit"
    assert rows[2][3:8] == ["6144", "7", "3", "79", "0"]
    assert rows[0][8].startswith("2026-11-27T09:19:44")


@pytest.mark.parametrize("name", ["seed.skopeo-oci-gzip.tar", "seed.skopeo-oci-zstd.tar",
                                  "seed.skopeo-oci-uncompressed.tar", "seed.docker-oci.tar.gz"])
def test_layers_compression_is_reported(capsysbinary, name):
    layers = run(capsysbinary, "layers", IMAGES / name, "--json").json()["layers"]
    want = {"gzip": "gzip", "zstd": "zstd"}.get(name.split("-")[-1].split(".")[0])
    assert {la["compression"] for la in layers} == {want}


def test_layers_of_multi_image_archive_need_image(capsysbinary):
    res = run(capsysbinary, "layers", IMAGES / "multi.docker-oci.tar")
    assert res.rc == 1
    assert "seed:latest" in res.err and "whiteout:latest" in res.err and "--image" in res.err
    res = run(capsysbinary, "layers", IMAGES / "multi.docker-oci.tar", "--image", "whiteout")
    assert res.rc == 0 and len(res.lines) == 6


def test_layers_of_oci_index_per_platform(capsysbinary):
    arm = run(capsysbinary, "layers", IMAGES / "seed.oci-index.tar", "--platform", "linux/arm64/v8")
    amd = run(capsysbinary, "layers", IMAGES / "seed.oci-index.tar", "--platform", "linux/amd64")
    assert len(arm.lines) == 4 and len(amd.lines) == 3
    assert [r.split("\t")[2] for r in amd.lines] == [r.split("\t")[2] for r in arm.lines][:3]
