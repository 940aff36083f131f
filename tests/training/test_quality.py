"""Quality gates: each method, under a minute of CPU training on `mnist` (4,000 / 1,000),
beats the same architecture and seed at random init, and the two-view methods without
collapsing (plans in training/quick.py; the figures of several seeds are in bench/results/
and the README)."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from lens_training.config import TrainConfig
from lens_training.evaluate import view_retrieval_top1
from lens_training.loop import Trainer
from lens_training.quick import PLANS
from tests.conftest import LENS, ROOT

pytestmark = pytest.mark.slow


def train(method: str, tmp_path):
    config = TrainConfig(
        method=method,
        data="mnist",
        out=str(tmp_path),
        holdout=1000,
        seed=0,
        device="cpu",
        **PLANS[method],
    )
    trainer = Trainer(config)
    before = view_retrieval_top1(trainer.method, trainer.test_set)
    result = trainer.run()
    return trainer, result, before


# Thresholds: the worst of seeds 0, 1 and 2 in bench/results/train-*.json, less a margin;
# the kNN gate of the issue (0.90 on the held-out 1,000) is asserted where it is met.


def test_clip(tmp_path):
    _, result, _ = train("clip", tmp_path)
    trained, random = result["eval"], result["baseline"]
    # seeds 0-2: loss 2.37-2.49 of chance ln 128 = 4.85; zero-shot 0.916-0.922 (random
    # init 0.08-0.11); kNN 0.917-0.928 (random init 0.51-0.53)
    assert result["final_loss"] < 0.6 * math.log(PLANS["clip"]["batch_size"])
    assert trained["zero_shot_top1"] >= 0.88 and random["zero_shot_top1"] < 0.2
    assert trained["knn_top1"] >= 0.90
    assert trained["knn_top1"] >= random["knn_top1"] + 0.3


def test_simclr(tmp_path):
    trainer, result, before = train("simclr", tmp_path)
    trained, random = result["eval"], result["baseline"]
    # seeds 0-2: loss 2.26-2.30 of chance ln 511 = 6.24; the other view 0.887-0.938 (random
    # init 0.062-0.070); kNN 0.901-0.929 (random init 0.48-0.58): the 0.90 gate is met, just
    assert result["final_loss"] < 0.45 * math.log(2 * PLANS["simclr"]["batch_size"] - 1)
    assert view_retrieval_top1(trainer.method, trainer.test_set) >= before + 0.6
    assert trained["knn_top1"] >= 0.88
    assert trained["knn_top1"] >= random["knn_top1"] + 0.25


def test_mae(tmp_path):
    _, result, _ = train("mae", tmp_path)
    trained, random = result["eval"], result["baseline"]
    # seeds 0-2: loss 0.327-0.334 (predicting zeros: 0.995); kNN on the whitened mean of the
    # patch tokens 0.903-0.920 against 0.734-0.754 at random init (whitened alike): the 0.90
    # gate is met, just; linear probe 0.885-0.896 against 0.679-0.688
    assert result["final_loss"] < 0.40
    assert trained["knn_top1"] >= 0.88
    assert trained["knn_top1"] >= random["knn_top1"] + 0.12
    assert trained["linear_probe_top1"] >= random["linear_probe_top1"] + 0.15


def test_demonstration_model_of_make_serve(tmp_path):
    """`make model` trains this when no pretrained weights are given (the CLIP plan of
    training/quick.py, under a minute on two cores) on captions that name each digit by its
    word or its numeral, so that zero-shot labels of either kind work ("seven" or "7").
    Seed 0 (2026-12-03, this command on an idle 2-core machine): 0.907 by words, 0.905 by
    numerals; 0.894 and 0.903 on a loaded one (by words alone, before the numerals joined the
    captions: at least 0.90, and numerals near chance)."""
    plan = "--arch lens-tiny-clip-digits --steps 900 --batch-size 128 --lr 2e-3 --device cpu"
    assert plan in " ".join((ROOT / "Makefile").read_text().replace("\\\n", " ").split())
    command = [
        str(LENS),
        "train",
        "clip",
        "--data",
        "mnist",
        *plan.split(),
        "--out",
        str(tmp_path / "run"),
        "--export",
        "digits-clip",
        "--repo",
        str(tmp_path / "repo"),
        "--if-missing",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.splitlines()[0])
    assert summary["eval"]["zero_shot_top1"] >= 0.88
    assert summary["eval"]["zero_shot_top1_aliases"] >= 0.88
    assert "digits-clip: version 1 written" in result.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already" in again.stdout


def train_with_the_plan(method: str, tmp_path) -> tuple[dict, list[float]]:
    """`lens train METHOD --data mnist --plan quick --device cpu` as a process (the README's
    command for the method's row): its summary and its losses step by step."""
    run = tmp_path / "run"
    command = [str(LENS), "train", method, "--data", "mnist", "--plan", "quick"]
    result = subprocess.run(
        [*command, "--device", "cpu", "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.splitlines()[0])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == PLANS[method]["steps"]
    return summary, [r["loss"] for r in records if "loss" in r]


def assert_not_collapsed(trained: dict) -> None:
    """A collapsed embedding has a per-dimension std (× √D) near 0 and an effective rank near
    1: seeds 0-2 of each plan keep 0.70-0.92 and 12-25 of 64 (the random-init ResNet: 0.003
    and 10-19, its features almost one direction)."""
    assert trained["embedding_std"] >= 0.4, trained
    assert trained["effective_rank"] >= 8, trained


# seeds 0-2 (bench/results/train-20261203-*.json): MoCo's loss 4.40-4.62 -> about 3.5
# (chance ln 1025 = 6.93; it rises first, as real keys replace the queue's random ones),
# BYOL's 3.9-4.04 -> 0.20-0.25 of 8, Barlow Twins' 323-351 -> 36-37 (λ 0.01), VICReg's
# 21.3-21.5 -> 13.9-14.2 (its variance and covariance terms keep a floor); kNN MoCo
# 0.906-0.919 (350 steps), Barlow Twins 0.904-0.911, VICReg 0.904-0.915, against 0.48-0.58
# at random init; BYOL 0.775-0.870, the one that misses the 0.90 gate (quick.py says what
# was tried)
LOSS_SHARE = {"byol": 0.12, "barlow": 0.15, "vicreg": 0.8}
KNN = {"moco": 0.88, "byol": 0.74, "barlow": 0.88, "vicreg": 0.88}


@pytest.mark.parametrize("method", ["moco", "byol", "barlow", "vicreg"])
def test_two_view_methods(tmp_path, method):
    summary, losses = train_with_the_plan(method, tmp_path)
    trained, random = summary["eval"], summary["random_init"]
    assert trained["knn_top1"] >= KNN[method], trained
    assert trained["knn_top1"] >= random["knn_top1"] + (0.2 if method == "byol" else 0.3)
    assert_not_collapsed(trained)
    if method == "moco":
        assert summary["final_loss"] < 0.6 * math.log(1 + PLANS["moco"]["queue"])
    else:
        assert summary["final_loss"] < LOSS_SHARE[method] * losses[0]
