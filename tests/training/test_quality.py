"""Quality gates: each method, about a minute of CPU training on `mnist` (4,000 / 1,000),
beats the same architecture and seed at random init (plans in training/quick.py; the
figures of several seeds are in bench/results/ and the README)."""

from __future__ import annotations

import math

import pytest

from training.evaluate import view_retrieval_top1
from training.loop import TrainConfig, Trainer
from training.quick import PLANS

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
    assert result["seconds"] < 120  # a minute on two idle cores; margin for a busy machine
    return trainer, result, before


def test_clip(tmp_path):
    _, result, _ = train("clip", tmp_path)
    trained, random = result["eval"], result["baseline"]
    assert result["final_loss"] < 0.75 * math.log(PLANS["clip"]["batch_size"])
    assert trained["zero_shot_top1"] >= 0.80 and random["zero_shot_top1"] < 0.3
    assert trained["knn_top1"] >= 0.85 > random["knn_top1"] + 0.2


def test_simclr(tmp_path):
    trainer, result, before = train("simclr", tmp_path)
    trained, random = result["eval"], result["baseline"]
    assert result["final_loss"] < 0.85 * math.log(2 * PLANS["simclr"]["batch_size"] - 1)
    assert view_retrieval_top1(trainer.method, trainer.test_set) >= before + 0.30
    assert trained["knn_top1"] >= random["knn_top1"] + 0.1


def test_mae(tmp_path):
    _, result, _ = train("mae", tmp_path)
    trained, random = result["eval"], result["baseline"]
    assert result["final_loss"] < 0.5  # predicting zeros scores 1.0 on normalised pixels
    assert trained["knn_top1"] >= random["knn_top1"] + 0.1
    assert trained["linear_probe_top1"] >= random["linear_probe_top1"] + 0.15
