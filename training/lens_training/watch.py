"""The pictures a run leaves in its folder at the end: `report.png`, its curves against steps
(loss, learning rate, throughput, and each evaluation's figures, against the random-init
baseline), and `embedding.png`, the held-out set's embedding projected to 2-D (PCA), coloured
by label. Both from what the run already has: `metrics.jsonl`'s records and the held-out
features."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRICS = "metrics.jsonl"
REPORT = "report.png"
EMBEDDING = "embedding.png"
# The evaluation figures worth a curve, in the order they are drawn.
FIGURES = (
    "knn_top1",
    "linear_probe_top1",
    "zero_shot_top1",
    "zero_shot_top1_aliases",
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, none needed
    import matplotlib.pyplot as plt

    return plt


def report(out: Path, title: str) -> Path:
    """`out/report.png`: four panels (loss, learning rate, images/s, evaluations) by step,
    from `out/metrics.jsonl`."""
    plt = _pyplot()
    lines = (out / METRICS).read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r and not r.get("baseline")]
    baseline: dict[str, float] = next((r["eval"] for r in records if r.get("baseline")), {})
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for axis, key, label in [
        (axes[0, 0], "loss", "loss"),
        (axes[0, 1], "lr", "learning rate"),
        (axes[1, 0], "images_per_s", "images/s"),
    ]:
        axis.plot([r["step"] for r in steps], [r[key] for r in steps], linewidth=1)
        axis.set(xlabel="step", ylabel=label)
        axis.grid(alpha=0.3)
    axis = axes[1, 1]
    for i, key in enumerate(k for k in FIGURES if any(k in r["eval"] for r in evals)):
        points = [(r["step"], r["eval"][key]) for r in evals if key in r["eval"]]
        color = f"C{i}"
        axis.plot(*zip(*points, strict=True), marker="o", color=color, label=key)
        if key in baseline:
            axis.axhline(baseline[key], color=color, linestyle=":", linewidth=1)
    axis.set(xlabel="step", ylabel="held-out top-1 (dotted: random init)", ylim=(0, 1))
    axis.grid(alpha=0.3)
    if evals:
        axis.legend(loc="lower right", fontsize="small")
    figure.suptitle(title)
    path = out / REPORT
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def embedding(
    out: Path, features: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str
) -> Path:
    """`out/embedding.png`: the held-out features (N, D) on their first two principal axes,
    one colour per label."""
    plt = _pyplot()
    centred = features - features.mean(axis=0)
    _, _, axes_ = np.linalg.svd(centred, full_matrices=False)
    points = centred @ axes_[:2].T
    figure, axis = plt.subplots(figsize=(7, 6), constrained_layout=True)
    for label in np.unique(labels):
        mine = labels == label
        name = classes[label] if label < len(classes) else str(label)
        axis.scatter(points[mine, 0], points[mine, 1], s=6, label=name, alpha=0.7)
    axis.set(xlabel="PC 1", ylabel="PC 2", title=title)
    axis.legend(markerscale=3, fontsize="small", loc="best")
    path = out / EMBEDDING
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
