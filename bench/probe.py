"""Linear probe against few-shot prototypes, from 1 to 100 labelled images per class, through a
real server.

For each training run (default: the digits CLIP of `make model`, trained here): export it into
the work folder's repository, serve it, and take the run's own split of its data, so that the
test images are ones the encoder never saw: the 1,000 held-out digits are the test set, the
4,000 it trained on the pool labelled examples are drawn from. Per k (1, 5, 10, 100 per class)
and per draw (seeds 0, 1, 2; a draw's k images of a class are the first k of one seeded
shuffle, so each k's set holds the smaller ones), write a folder of one sub-folder per class,
and make both classifiers from it with the CLI, `lens classifier create --examples` (class
means) and `--train` (logistic regression on the served embeddings), then classify the
held-out set with each through `Classify`. Prints top-1 per k (mean and min over draws) and
writes JSON to bench/results/.

The linear probe's reported held-out accuracy comes from the server's own 80/20 split of the
training folder; at 1 image per class it holds none out (-1) and fits all ten.

    python bench/probe.py                                  # trains the digits CLIP first
    python bench/probe.py --run runs/digits-clip           # the run `make model` leaves
    python bench/probe.py --run runs/digits-clip --simclr  # and a quick SimCLR, trained here
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import machine, save, serve
from PIL import Image

from lens_client import LensClient

LENS = Path(sys.executable).with_name("lens")
KINDS = {"few-shot": "--examples", "linear": "--train"}


def lens(*command: str) -> str:
    done = subprocess.run([str(LENS), *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lens {' '.join(command[:3])} failed: {done.stderr[-2000:]}")
    return done.stdout


def trained(method: str, work: Path) -> Path:
    """The quick `method` run (training/lens_training/quick.py; for CLIP the Makefile's `model`
    recipe) in the work folder as `digits-METHOD`, trained now unless it is there."""
    run = work / "runs" / f"digits-{method}"
    if not (run / "checkpoint.pt").is_file():
        command = ["train", method, "--data", "mnist", "--plan", "quick", "--device", "cpu"]
        print(f"lens {' '.join(command)}", flush=True)
        lens(*command, "--out", str(run), "--quiet")
    return run


def exported(run: Path, repo: Path) -> str:
    """`lens export` of the run into `repo`, named after its folder (nothing if there)."""
    if not (repo / run.name / "1").is_dir():
        lens("export", str(run), "--name", run.name, "--repo", str(repo))
    return run.name


def png(pixels: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def split(run: Path) -> tuple[Any, Any]:
    """(pool, held-out) of the run's data: the split it trained and evaluated on."""
    from lens_training import checkpoint, data
    from lens_training.encoders import image_spec_of_arch

    saved = checkpoint.load(run / checkpoint.CHECKPOINT)
    config = checkpoint.config_of(saved)
    full = data.load(config.data, image_spec_of_arch(saved["arch"]))
    pool, test = full.split(config.holdout_count(len(full)), config.seed)
    assert pool.labels is not None and test.labels is not None, f"{config.data} has no labels"
    return pool, test


def draw_folder(pool: Any, order: dict[int, np.ndarray], k: int, folder: Path) -> None:
    """One sub-folder per class of its first k images in `order`."""
    for c, members in order.items():
        sub = folder / pool.classes[c]
        sub.mkdir(parents=True)
        for j, i in enumerate(members[:k]):
            (sub / f"{j}.png").write_bytes(png(pool.pixels[i]))


def measure(
    client: LensClient,
    address: str,
    classifier: tuple[str, str, str],
    folder: Path,
    test: tuple[list[bytes], list[str]],
) -> dict[str, Any]:
    """Create the (name, kind, model) classifier from `folder` with the CLI, classify the
    held-out images with it, delete it; its top-1 and the seconds the create took."""
    name, kind, model = classifier
    create = ["classifier", "create", name, KINDS[kind], str(folder), "--model", model]
    start = time.perf_counter()
    info = json.loads(lens(*create, "--server", address))
    seconds = time.perf_counter() - start
    images, truth = test
    start = time.perf_counter()
    predicted = []
    for i in range(0, len(images), 500):  # under the server's 1,024 inputs a request
        predicted += [r[0]["label"] for r in client.classify(images[i : i + 500], classifier=name)]
    classify_seconds = time.perf_counter() - start
    client.delete_classifier(name)
    top1 = float(np.mean([a == b for a, b in zip(predicted, truth, strict=True)]))
    row = {"top1": top1, "create_seconds": seconds, "classify_seconds": classify_seconds}
    if kind == "linear":
        row["held_out_accuracy"] = info["held_out_accuracy"]
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    top1 = [r["top1"] for r in rows]
    return {"mean": float(np.mean(top1)), "min": float(min(top1)), "draws": rows}


def bench_run(run: Path, repo: Path, work: Path, shots: list[int], draws: int) -> dict[str, Any]:
    model = exported(run, repo)
    pool, test = split(run)
    labels = pool.labels.numpy()
    held_out = ([png(p) for p in test.pixels], [test.classes[int(y)] for y in test.labels])
    # Classifiers a stopped run left behind would collide with this run's names.
    shutil.rmtree(repo / model / "classifiers", ignore_errors=True)
    served = serve(repo, "--max-batch-size", "64")
    results: dict[str, Any] = {}
    try:
        with LensClient(served.address, timeout=600) as client:
            for k in shots:
                rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
                for seed in range(draws):
                    rng = np.random.default_rng(seed)
                    order = {
                        c: rng.permutation(np.flatnonzero(labels == c))
                        for c in range(len(pool.classes))
                    }
                    folder = work / "draws" / model / f"k{k}-seed{seed}"
                    shutil.rmtree(folder, ignore_errors=True)
                    draw_folder(pool, order, k, folder)
                    for kind in KINDS:
                        classifier = (f"probe-{model}-{kind}-{k}-{seed}", kind, model)
                        rows[kind].append(
                            measure(client, served.address, classifier, folder, held_out)
                        )
                results[str(k)] = {kind: summary(r) for kind, r in rows.items()}
                figures = ", ".join(
                    f"{kind} {s['mean']:.3f} (min {s['min']:.3f})"
                    for kind, s in results[str(k)].items()
                )
                print(f"{model} k={k}: {figures}", flush=True)
    finally:
        served.process.terminate()
        served.process.wait(30)
    return {"run": str(run), "pool": len(pool), "test": len(test), "per_class": results}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, action="append", default=[], help="a training run (repeatable)"
    )
    parser.add_argument("--simclr", action="store_true", help="also a quick SimCLR, trained here")
    parser.add_argument("--shots", default="1,5,10,100", help="labelled images per class")
    parser.add_argument("--draws", type=int, default=3, help="draws per k (seeds 0, 1, ...)")
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "lens-bench-probe"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runs = list(args.run) or [trained("clip", args.work)]
    if args.simclr:
        runs.append(trained("simclr", args.work))
    shots = [int(s) for s in args.shots.split(",")]
    start = time.perf_counter()
    models = {
        run.name: bench_run(run, args.work / "repo", args.work, shots, args.draws) for run in runs
    }
    print(f"\n{'model':14} {'per class':>9} {'few-shot mean (min)':>20} {'linear mean (min)':>18}")
    for model, result in models.items():
        for k, row in result["per_class"].items():
            few, linear = row["few-shot"], row["linear"]
            print(
                f"{model:14} {k:>9} {few['mean']:12.3f} ({few['min']:.3f}) "
                f"{linear['mean']:10.3f} ({linear['min']:.3f})"
            )
    report = {
        "benchmark": "probe",
        "machine": machine(torch=torch.__version__),
        "command": " ".join(["python", "bench/probe.py", *sys.argv[1:]]),
        "shots": shots,
        "draws": args.draws,
        "seconds": time.perf_counter() - start,
        "models": models,
    }
    save(report, "probe", args.out)


if __name__ == "__main__":
    main()
