"""Training data sources: folders, caption files, tar shards, built-in sets, splits."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from lens_server.repository.manifest import ImageSpec
from lens_training.data import DataError, caption_labels, load
from tests.conftest import encode, photo

SPEC = ImageSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_builtin_sets_and_seeded_split():
    mnist = load("mnist", SPEC)
    assert mnist.pixels.shape == (5000, 3, 32, 32) and mnist.pixels.dtype == torch.uint8
    assert mnist.classes[7] == "seven" and set(mnist.labels.tolist()) == set(range(10))
    train, test = mnist.split(1000, seed=0)
    assert (len(train), len(test)) == (4000, 1000)
    assert len(set(test.labels.tolist())) == 10  # shuffled, not the sorted tail
    again = mnist.split(1000, seed=0)[1]
    assert torch.equal(again.pixels, test.pixels)
    digits = load("digits", SPEC)
    assert len(digits) == 1797


def test_folder_with_classes_skips_unreadable_images(tmp_path):
    for cls, name in (("cats", "chelsea"), ("cups", "coffee")):
        (tmp_path / cls).mkdir()
        Image.fromarray(photo(name)).save(tmp_path / cls / f"{name}.jpg")
    (tmp_path / "cats" / "broken.png").write_bytes(b"not a png")
    data = load(str(tmp_path), SPEC)
    assert len(data) == 2 and data.skipped == 1
    assert data.classes == ("cats", "cups") and data.labels.tolist() == [0, 1]


def test_caption_files(tmp_path):
    Image.fromarray(photo("astronaut")).save(tmp_path / "a.png")
    Image.fromarray(photo("rocket")).save(tmp_path / "r.png")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"path": "a.png", "caption": "an astronaut"})
        + "\n"
        + json.dumps({"path": "r.png", "caption": "a rocket"})
    )
    data = load(str(tmp_path / "c.jsonl"), SPEC)
    assert data.captions == ["an astronaut", "a rocket"] and data.labels is None
    (tmp_path / "c.csv").write_text("path,caption\na.png,an astronaut\nmissing.png,nothing\n")
    with pytest.raises(DataError, match=r"c\.csv:3: image missing\.png does not exist"):
        load(str(tmp_path / "c.csv"), SPEC)


def test_tar_shards(tmp_path):
    shard = tmp_path / "shards"
    shard.mkdir()
    with tarfile.open(shard / "000.tar", "w") as tar:
        for key, name in (("0001", "chelsea"), ("0002", "coffee")):
            for suffix, data in ((".jpg", encode(photo(name), "JPEG")), (".txt", name.encode())):
                info = tarfile.TarInfo(key + suffix)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = load(str(shard), SPEC)
    assert data.captions == ["chelsea", "coffee"] and len(data) == 2


def test_captions_from_labels():
    data = load("digits", SPEC)
    captions = caption_labels(data, ("a photo of the number {}.",), torch.Generator())
    names = [(c, str(i)) for i, c in enumerate(data.classes)]  # "seven" or "7"
    for caption, label in zip(captions, data.labels.tolist(), strict=True):
        assert caption in {f"a photo of the number {n}." for n in names[label]}
    words = sum(c.removeprefix("a photo of the number ")[0].isalpha() for c in captions)
    assert 0.4 < words / len(captions) < 0.6  # both kinds, about evenly


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="not a built-in set"):
        load(str(tmp_path / "nothing"), SPEC)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load(str(tmp_path / "empty"), SPEC)
