"""Quality of the three training methods on the CPU: tiny models, `mnist`, 4,000 / 1,000.

For each method: train for a fixed number of steps (about a minute on 2 cores), then compare
with the same architecture and seed at random init: final loss against chance, kNN top-1
(k = 20), linear probe top-1, zero-shot top-1 (CLIP), and retrieval of the other augmented
view among 256 candidates. Prints the table and writes JSON to bench/results/.

    python bench/train.py
    python bench/train.py --methods clip --seeds 0,1,2
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
    row = {
        "method": method,
        "seed": seed,
        "arch": plan["arch"],
        "steps": result["steps"],
        "seconds": result["seconds"],
        "final_loss": result["final_loss"],
        "trained": {**result["eval"], "view_retrieval_top1": after},
        "random_init": {**result["baseline"], "view_retrieval_top1": before},
    }
    if method in ("clip", "simclr"):
        row["chance_loss"] = chance(method, plan["batch_size"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--methods", default="clip,simclr,mae")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
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
        loss = f"{row['final_loss']:.3f}" + (
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
