"""The `lens` command, run as a process."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import LENS, TINY_ARCH, photo


def lens(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [str(LENS), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_import_openclip_from_a_checkpoint_then_if_missing(tmp_path, tiny_openclip):
    checkpoint = str(tiny_openclip[3])
    first = lens(
        "import",
        "openclip",
        "--arch",
        str(TINY_ARCH),
        "--name",
        "mine",
        "--pretrained",
        checkpoint,
        "--repo",
        str(tmp_path),
    )
    assert first.returncode == 0, first.stderr
    assert "mine: version 1 written" in first.stdout and "image parity" in first.stdout
    manifest = json.loads((tmp_path / "mine" / "1" / "manifest.json").read_text())
    assert manifest["source"]["pretrained"] == checkpoint
    assert manifest["parity"]["image"]["min_cosine"] >= 0.99999
    again = lens(
        "import",
        "openclip",
        "--arch",
        str(TINY_ARCH),
        "--name",
        "mine",
        "--if-missing",
        env={"LENS_REPO": str(tmp_path)},
    )
    assert again.returncode == 0 and "already" in again.stdout
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["1"]


def test_import_of_an_unknown_architecture_fails_in_one_line(tmp_path):
    result = lens(
        "import", "openclip", "--arch", "No-Such-Arch", "--name", "x", "--repo", str(tmp_path)
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("lens: import failed, nothing written")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_failed_parity_writes_nothing(tmp_path, monkeypatch, tiny_openclip):
    from lens_server.repository import Repository
    from lens_training.export import ParityError, parity
    from lens_training.export.openclip import import_openclip

    monkeypatch.setattr(parity, "FP32_THRESHOLD", 1.0000001)  # no export can reach it
    repo = Repository(tmp_path)
    with pytest.raises(ParityError, match="below"):
        import_openclip(repo, str(TINY_ARCH), "strict")
    assert repo.models() == [] and list((tmp_path / "strict").iterdir()) == []


def test_embed_prints_json_lines(server, tmp_path, tiny_openclip):
    path = tmp_path / "cat.jpg"
    Image.fromarray(photo("chelsea")).save(path)
    result = lens(
        "embed",
        "--image",
        str(path),
        "--text",
        "a photo of a cat",
        "--text",
        "a dog",
        env={"LENS_SERVER": server.address},
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == [str(path), "a photo of a cat", "a dog"]
    assert {(line["model"], line["version"]) for line in lines} == {("tiny", 1)}
    model, _, tokenizer, _ = tiny_openclip
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_text(tokenizer(["a dog"])), dim=-1)
    np.testing.assert_allclose(lines[2]["embedding"], want[0].numpy(), atol=1e-4)


def test_models_and_health(server):
    listed = lens("models", "--server", server.address)
    assert listed.returncode == 0
    assert "tiny (default): clip, dim 32, image+text, serving version 1" in listed.stdout
    as_json = json.loads(lens("models", "ls", "tiny", "--json", "--server", server.address).stdout)
    assert as_json[0]["versions"][0]["state"] == "serving"
    assert lens("health", "--server", server.address).returncode == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["embed"], 2, "give at least one --text or --image"),
        (["embed", "--image", "/no/such.jpg"], 2, "/no/such.jpg: no such file"),
        (["embed", "--text", "x", "--model", "absent"], 1, "NOT_FOUND: model 'absent' not found"),
        (["embed", "--text", "x", "--model", "tiny:x"], 1, "must be a number"),
    ],
)
def test_client_errors_are_one_line(server, args, code, message):
    result = lens(*args, "--server", server.address)
    assert result.returncode == code
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreachable_server(tmp_path):
    result = lens("embed", "--text", "x", "--server", "127.0.0.1:1", timeout=120)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
    assert lens("health", "--server", "127.0.0.1:1").returncode == 1


def test_index_commands(server, tmp_path):
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(photo(name)).save(folder / f"{name}.jpg")
    Image.fromarray(photo("chelsea")).save(tmp_path / "photos" / "chelsea-again.png")
    env = {"LENS_SERVER": server.address}
    created = lens("index", "create", "album", "--model", "tiny", "--type", "flat", env=env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["dim"] == 32

    added = lens("index", "add", "album", str(tmp_path / "photos"), env=env)
    assert added.returncode == 0 and "added 4, skipped 0" in added.stderr
    again = lens("index", "add", "album", str(tmp_path / "photos"), env=env)
    assert "added 0, skipped 4" in again.stderr

    query = folder / "coffee.jpg"
    hits = [
        json.loads(x)
        for x in lens(
            "search", "album", "--image", str(query), "--k", "2", env=env
        ).stdout.splitlines()
    ]
    assert hits[0]["id"] == str(query) and len(hits) == 2
    by_id = lens("search", "album", "--id", str(query), "--k", "1", env=env)
    assert json.loads(by_id.stdout)["id"] == str(query)
    assert lens("search", "album", "--text", "a cat", env=env).returncode == 0

    described = json.loads(lens("index", "describe", "album", env=env).stdout)
    assert described["count"] == 4 and described["model"] == "tiny"
    assert "album" in lens("index", "ls", env=env).stdout
    groups = [
        json.loads(x)
        for x in lens(
            "index", "dedup", "album", "--threshold", "0.995", env=env
        ).stdout.splitlines()
    ]
    assert sorted(groups[0]) == sorted(
        [str(folder / "chelsea.jpg"), str(tmp_path / "photos" / "chelsea-again.png")]
    )
    assert lens("index", "drop", "album", env=env).returncode == 0
    missing = lens("search", "album", "--text", "x", env=env)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    assert lens("search", "album", env=env).returncode == 2


def test_classify_and_classifier_commands(server, tmp_path):
    env = {"LENS_SERVER": server.address}
    images = []
    for name in ("chelsea", "coffee"):
        path = tmp_path / f"{name}.png"
        Image.fromarray(photo(name)).save(path)
        images.append(str(path))
    out = lens(
        "classify",
        *images,
        "--labels",
        "cat,cup of coffee,rocket",
        "--top-k",
        "2",
        "--templates",
        "openai-imagenet",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["input"] for x in lines] == images and len(lines[0]["labels"]) == 2
    template_file = tmp_path / "templates.txt"
    template_file.write_text("a photo of a {label}.\nan image of {}\n")
    assert (
        lens(
            "classify", images[0], "--labels", "cat,dog", "--templates", str(template_file), env=env
        ).returncode
        == 0
    )

    examples = tmp_path / "examples"
    for name in ("chelsea", "coffee"):
        (examples / name).mkdir(parents=True)
        Image.fromarray(photo(name)).save(examples / name / "1.jpg")
    created = lens("classifier", "create", "cli-few", "--examples", str(examples), env=env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["kind"] == "few-shot"
    top = [
        json.loads(x)["labels"][0]["label"]
        for x in lens(
            "classify", *images, "--classifier", "cli-few", "--top-k", "1", env=env
        ).stdout.splitlines()
    ]
    assert top == ["chelsea", "coffee"]
    assert "cli-few" in lens("classifier", "ls", env=env).stdout
    assert json.loads(lens("classifier", "get", "cli-few", env=env).stdout)["shots"] == 1
    assert lens("classifier", "delete", "cli-few", env=env).returncode == 0
    gone = lens("classify", images[0], "--classifier", "cli-few", env=env)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
    (examples / "empty").mkdir()
    bad = lens("classifier", "create", "x", "--examples", str(examples), env=env)
    assert bad.returncode == 2 and "class 'empty' has no images" in bad.stderr
    assert lens("classify", images[0], env=env).returncode == 2
