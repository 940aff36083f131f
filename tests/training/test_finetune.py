"""`lens finetune` through the CLI as a process: a short SimCLR run on the built-in digits,
exported to a temporary repository, fine-tuned on 10% of the labels against the linear probe
on the same frozen encoder, then deployed on a real server that classifies through the
fine-tuned head; bad input refused before any step."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lens_server.classifiers import ClassifierStore
from lens_server.repository import Repository
from lens_training.config import TrainConfig
from lens_training.data import DIGIT_NAMES
from lens_training.export.trained import export_run
from lens_training.loop import Trainer
from tests.conftest import LENS, ServerProcess, encode


def lens(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LENS), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A repository holding `digits` version 1: SimCLR's tiny ResNet after a few steps."""
    root = tmp_path_factory.mktemp("finetune")
    config = TrainConfig(
        method="simclr",
        data="digits",
        arch="lens-tiny-resnet",
        out=str(root / "run"),
        steps=4,
        batch_size=32,
        holdout=300,
        device="cpu",
        baseline=False,
        lr=1e-3,
        optimizer="adamw",
    )
    Trainer(config).run()
    export_run(Repository(root / "repo"), root / "run", "digits")
    return root / "repo"


@pytest.mark.slow
def test_finetune_beats_the_linear_probe_on_a_tenth_of_the_labels(trained):
    result = lens(  # `lens train finetune` is `lens finetune`
        *("train", "finetune", "--init", "digits:1", "--data", "digits"),
        "--label-fraction",
        "0.1",
        *("--steps", "60", "--batch-size", "32", "--repo", str(trained)),
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[0])
    assert figures["labelled"] == round(0.1 * (1797 - round(0.2 * 1797)))
    assert figures["finetuned"] > figures["linear_probe"], figures
    assert "digits: version 2 written" in result.stdout
    store = ClassifierStore(trained)
    spec = store.get("digits-finetuned")
    assert spec.kind == "linear" and len(spec.labels) == 10
    weights = store.weights(spec, 2)
    dim = Repository(trained).manifest("digits", 2).dim
    assert weights is not None and weights.shape == (10, dim + 1)
    assert sum(len(e) for e in store.examples(spec)) == figures["labelled"]

    # both deployable: the new version serves, and Classify answers through the head
    from sklearn.datasets import load_digits

    from lens_client import LensClient

    digits = load_digits()
    images = [
        encode(Image.fromarray((a * (255 / 16)).astype(np.uint8), mode="L"))
        for a in digits.images[-200:]  # the last 200 of the 1,797: mostly held out
    ]
    server = ServerProcess(trained, "--default-model", "digits")
    try:
        deployed = lens("deploy", "digits", "2", "--server", server.address)
        assert deployed.returncode == 0, deployed.stderr
        with LensClient(server.address) as client:
            assert client.get_model("digits")["serving_version"] == 2
            answers = client.classify(images, classifier="digits-finetuned", model="digits")
        predicted = [DIGIT_NAMES.index(a[0]["label"]) for a in answers]
        accuracy = float(np.mean(np.asarray(predicted) == digits.target[-200:]))
        assert accuracy >= figures["finetuned"] - 0.1, (accuracy, figures)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", "zero"], "zero is one class"),
        (["--labels", "zero,eleven"], "--labels eleven: no such sub-folder"),
        (["--label-fraction", "0"], "--label-fraction 0.0 must be in (0, 1]"),
        (["--init", "nothing"], "--init nothing"),
    ],
)
def test_bad_input_is_refused_before_training(trained, args, message):
    base = {"--init": "digits:1", "--data": "digits"}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value
    flat = [x for pair in base.items() for x in pair if pair[0] in ("--init", "--data")]
    flat += [x for pair in base.items() for x in pair if pair[0] not in ("--init", "--data")]
    result = lens("finetune", *flat, "--repo", str(trained))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_a_version_without_weights_and_an_empty_class_are_refused(tiny_repo, trained, tmp_path):
    # A version holding only its ONNX programs (no checkpoint.pt to start from); a copy, since
    # the shared repository must stay as it is.
    repo = Path(shutil.copytree(tiny_repo, tmp_path / "repo"))
    (repo / "tiny" / "1" / "checkpoint.pt").unlink()
    before = sorted((repo / "tiny").rglob("*"))
    result = lens("finetune", "--init", "tiny", "--data", "digits", "--repo", str(repo))
    assert result.returncode == 2
    assert "--init tiny: the version has no checkpoint.pt" in result.stderr
    assert sorted((repo / "tiny").rglob("*")) == before  # nothing written
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data" / "a" / "0.png")
    result = lens(
        *("finetune", "--init", "digits", "--data", str(tmp_path / "data")),
        *("--labels", "a,b", "--repo", str(trained)),
    )
    assert result.returncode == 2
    assert "b" in result.stderr and ("no images" in result.stderr or "no such" in result.stderr)
