"""Library errors speak in library terms; the CLI words the same errors with its flags."""

from __future__ import annotations

import gzip
import os

import pytest

import imgfs
from conftest import IMAGES
from imgfs.cli import FLAGS


@pytest.mark.parametrize("choose, library, cli", [
    (lambda a: a.image(), "choose one by image ref: seed:latest", "choose one by --image: seed:latest"),
    (lambda a: a.image("nope"), "no image matches image ref 'nope'", "no image matches --image 'nope'"),
    (lambda a: a.image("seed", platform="x/y"), "no image for platform 'x/y'", "no image for --platform 'x/y'"),
    (lambda a: a.image("seed").find_layer("9"), "layer 9: the image has 4 layers", "--layer 9: the image has"),
    (lambda a: a.image("seed").find_layer("zz"), "layer 'zz' matches no layer", "--layer 'zz' matches no layer"),
    (lambda a: a.image("whiteout").find_layer("RUN"), "layer 'RUN' matches 5 layers", "--layer 'RUN' matches 5"),
])
def test_selection_errors_name_choices_by_library_words_and_cli_flags(choose, library, cli):
    with imgfs.open_archive(IMAGES / "multi.docker-oci.tar", use_cache=False) as archive, \
            pytest.raises(imgfs.SelectionError) as e:
        choose(archive)
    assert library in str(e.value) and "--" not in str(e.value)
    assert cli in e.value.worded(FLAGS)


def test_a_message_holding_braces_is_kept_as_it_is():
    # layer names and paths may hold {braces}: only the template is formatted, never the values in it
    e = imgfs.SelectionError("{layer} {sel!r} matches no layer; layers: {listing}", sel="{x}",
                             listing="1 RUN echo ${VERSION}")
    assert str(e) == "layer '{x}' matches no layer; layers: 1 RUN echo ${VERSION}"
    assert str(imgfs.SelectionError("a {plain} message")) == "a {plain} message"


def test_a_random_gzip_file_is_not_an_image_archive(tmp_path):
    path = tmp_path / "random.gz"
    path.write_bytes(gzip.compress(os.urandom(4096)))
    with pytest.raises(imgfs.FormatError) as e:
        imgfs.open_archive(path, use_cache=False)
    assert str(e.value) == f"{path}: not a container image archive: its gzip data is not a tar file"
