"""Quality of the training methods on the CPU: tiny models, `mnist`, 4,000 / 1,000.

For each method: train for a fixed number of steps (about a minute on 2 cores), then compare
with the same architecture and seed at random init: final loss against chance, kNN top-1
(k = 20), linear probe top-1, zero-shot top-1 (CLIP), and retrieval of the other augmented
view among 256 candidates; the held-out embedding's spread (per-dimension std × √D and
effective rank: a collapsed embedding has std near 0 and rank near 1); the first and the
last loss. Prints the table and writes JSON to bench/results/. Each row is the run of

    lens train METHOD --data mnist --plan quick --seed SEED --device cpu

    python bench/train.py
    python bench/train.py --methods moco,byol,barlow,vicreg --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from harness import machine, save

from lens_training.config import TrainConfig
from lens_training.evaluate import chance, view_retrieval_top1
from lens_training.loop import Trainer
from lens_training.quick import PLANS


def run(method: str, seed: int, out: Path) -> dict:
    plan = PLANS[method]
    config = TrainConfig(
        method=method, data="mnist", out=str(out), holdout=1000, seed=seed, device="cpu", **plan
    )
    trainer = Trainer(config)
    before = view_retrieval_top1(trainer.method, trainer.test_set)
    result = trainer.run()
    after = view_retrieval_top1(trainer.method, trainer.test_set)
    losses = [record["loss"] for record in trainer.history if "loss" in record]
    row = {
        "method": method,
        "seed": seed,
        "arch": plan["arch"],
        "steps": result["steps"],
        "seconds": result["seconds"],
        "first_loss": losses[0],
        "final_loss": result["final_loss"],
        "trained": {**result["eval"], "view_retrieval_top1": after},
        "random_init": {**result["baseline"], "view_retrieval_top1": before},
    }
    reference = chance(method, plan["batch_size"], plan.get("queue", 0))
    if reference is not None:
        row["chance_loss"] = reference
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(PLANS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (all cores)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows.append(run(method, seed, Path(folder) / f"{method}-{seed}"))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'method':7} {'seed':>4} {'metric':20} {'trained':>8} {'random':>8} {'seconds':>8}")
    for row in rows:
        for metric, value in row["trained"].items():
            print(
                f"{row['method']:7} {row['seed']:>4} {metric:20} {value:8.3f} "
                f"{row['random_init'].get(metric, float('nan')):8.3f} {row['seconds']:8.1f}"
            )
        loss = f"{row['first_loss']:.3f} -> {row['final_loss']:.3f}" + (
            f" (chance {row['chance_loss']:.3f})" if "chance_loss" in row else ""
        )
        print(f"{row['method']:7} {row['seed']:>4} {'final loss':20} {loss}")
    report = {
        "benchmark": "train",
        "machine": machine(torch=torch.__version__),
        "plans": PLANS,
        "rows": rows,
    }
    save(report, "train", args.out)


if __name__ == "__main__":
    main()
