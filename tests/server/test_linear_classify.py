"""Linear classifiers over the real server: created over gRPC, HTTP and the CLI as a process,
served by Classify as [W | b] logits, refused on bad training input, re-fitted on deploy."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from lens.v1 import classifiers_pb2, inference_pb2, models_pb2, models_pb2_grpc

from lens_client import LensClient
from tests.conftest import LENS, ServerProcess, encode, photo
from tests.server.test_classify import classifiers, classify
from tests.server.test_deploy import add_version
from tests.server.test_deploy import second_checkpoint as second_checkpoint  # the fixture
from tests.server.test_grpc import embed, matrix

pytestmark = pytest.mark.slow

NAMES = ["chelsea", "astronaut", "coffee"]


def training_images() -> dict[str, list[bytes]]:
    """Five images per label: the photo, flipped, and JPEGs of both."""
    shots = {}
    for name in NAMES:
        image = photo(name)
        flipped = image[:, ::-1]
        shots[name] = [
            encode(image, "PNG"),
            encode(flipped, "PNG"),
            encode(image, "JPEG", quality=70),
            encode(flipped, "JPEG", quality=70),
            encode(image[8:-8, 8:-8], "PNG"),
        ]
    return shots


def linear_request(name: str, shots: dict[str, list[bytes]]):
    return classifiers_pb2.CreateClassifierRequest(
        name=name,
        linear=classifiers_pb2.Linear(
            classes=[classifiers_pb2.Examples(label=n, images=i) for n, i in shots.items()]
        ),
    )


@pytest.fixture(scope="module")
def repo(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the repository, holding `head`: a linear head saved without its
    examples for version 1, as fine-tuning saves one."""
    from lens_server.classifiers import ClassifierSpec, ClassifierStore

    root = Path(shutil.copytree(tiny_repo, tmp_path_factory.mktemp("linear") / "repo"))
    head = ClassifierSpec("head", "tiny", "linear", tuple(NAMES), kept_examples=False)
    store = ClassifierStore(root)
    store.create(head)
    store.save_weights(head, 1, np.random.default_rng(0).normal(size=(3, 33)))
    return root


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(repo, "--poll-s", "0")
    yield proc
    proc.stop()


@pytest.fixture()
def channel(served: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.address) as ch:
        yield ch


def weights(repo: Path, name: str, version: int) -> np.ndarray:
    return np.load(repo / "tiny" / "classifiers" / name / f"weights-{version}.npy")


def test_grpc_linear_classifier_scores_logits(channel, repo):
    shots = training_images()
    info = classifiers(channel).CreateClassifier(linear_request("probe", shots), timeout=120)
    assert (info.kind, list(info.labels), info.shots, list(info.versions)) == (
        "linear",
        NAMES,
        5,
        [1],
    )
    assert 0 <= info.held_out_accuracy <= 1  # one of each label's five held out
    head = weights(repo, "probe", 1)
    assert head.shape == (3, 32 + 1)
    queries = [encode(photo(n), "JPEG", quality=90) for n in NAMES]
    response = classify(channel, queries, top_k=3, saved="probe")
    x = matrix(embed(channel, *[inference_pb2.Input(image=q) for q in queries]))
    logits = x @ head[:, :-1].T + head[:, -1]
    probability = np.exp(logits - logits.max(axis=1, keepdims=True))
    probability /= probability.sum(axis=1, keepdims=True)
    for n, result in enumerate(response.results):
        got = {s.label: (s.probability, s.similarity) for s in result.labels}
        for c, label in enumerate(NAMES):
            assert got[label][0] == pytest.approx(probability[n, c], abs=1e-4)
            assert got[label][1] == pytest.approx(logits[n, c], abs=1e-4)
    # It fits its own training photos.
    assert [r.labels[0].label for r in response.results] == NAMES
    listed = {
        c.name: c
        for c in classifiers(channel)
        .ListClassifiers(classifiers_pb2.ListClassifiersRequest(), timeout=10)
        .classifiers
    }
    assert listed["probe"].kind == "linear"
    assert listed["probe"].held_out_accuracy == info.held_out_accuracy


@pytest.mark.parametrize(
    ("shots", "message"),
    [
        ({"chelsea": [b"x"]}, "two labels or more"),
        ({"chelsea": [encode(photo("chelsea"), "PNG")], "coffee": []}, "'coffee' has no"),
        (
            {"chelsea": [encode(photo("chelsea"), "PNG")], "coffee": [b"not an image"]},
            "training image 0 of label 'coffee' is not an image",
        ),
    ],
)
def test_bad_training_input_is_refused(channel, shots, message):
    with pytest.raises(grpc.RpcError) as e:
        classifiers(channel).CreateClassifier(linear_request("bad", shots), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()


def test_http_linear_classifier(served):
    assert served.http
    shots = training_images()
    body = {
        "name": "probe-http",
        "linear": {
            "classes": [
                {"label": n, "images": [base64.b64encode(i).decode() for i in imgs]}
                for n, imgs in shots.items()
            ]
        },
    }
    with httpx.Client(base_url=served.http, timeout=120) as api:
        created = api.post("/v1/classifiers", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["kind"] == "linear"
        got = api.get("/v1/classifiers/probe-http").json()
        assert 0 <= got["held_out_accuracy"] <= 1
        one = {**body, "name": "one", "linear": {"classes": body["linear"]["classes"][:1]}}
        refused = api.post("/v1/classifiers", json=one)
        assert refused.status_code == 400
        assert "two labels or more" in refused.json()["error"]["message"]


def test_cli_train(served, tmp_path):
    for name, images in training_images().items():
        (tmp_path / "train" / name).mkdir(parents=True)
        for j, data in enumerate(images):
            (tmp_path / "train" / name / f"{j}.png").write_bytes(data)
    run = [str(LENS), "classifier", "create"]
    done = subprocess.run(
        [*run, "probe-cli", "--train", str(tmp_path / "train"), "--server", served.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"kind": "linear"' in done.stdout and "held_out_accuracy" in done.stdout
    (tmp_path / "one" / "chelsea").mkdir(parents=True)
    shutil.copy(tmp_path / "train" / "chelsea" / "0.png", tmp_path / "one" / "chelsea")
    refused = subprocess.run(
        [*run, "x", "--train", str(tmp_path / "one"), "--server", served.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "two class sub-folders or more" in refused.stderr


def test_deploy_refits_linear_and_keeps_a_head_without_examples(
    channel, served, repo, second_checkpoint
):
    listed = classifiers(channel).ListClassifiers(classifiers_pb2.ListClassifiersRequest())
    if "probe" not in {c.name for c in listed.classifiers}:  # this test alone
        classifiers(channel).CreateClassifier(linear_request("probe", training_images()))
    queries = [encode(photo(n), "JPEG", quality=90) for n in NAMES]
    assert classify(channel, queries, saved="head").version == 1
    with LensClient(served.address) as client:
        assert add_version(repo, second_checkpoint) == 2
        client.reload_models()
        models_pb2_grpc.ModelsStub(channel).Deploy(
            models_pb2.DeployRequest(name="tiny", version=2), timeout=120
        )
    refit = weights(repo, "probe", 2)  # re-fitted from the kept examples, re-embedded
    assert refit.shape == (3, 33)
    assert not np.allclose(refit, weights(repo, "probe", 1))
    assert classify(channel, queries, saved="probe").version == 2
    with pytest.raises(grpc.RpcError) as e:
        classify(channel, queries, saved="head")
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "kept no training examples" in e.value.details()
