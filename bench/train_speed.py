"""Training throughput and memory of each method, on synthetic images, through the product's
own training step (`Trainer._train_step`: bf16 autocast and channels-last on a GPU, fused
AdamW or LARS, gradient clipping).

The issue's targets on one H100, bf16:
- SimCLR, ResNet-18 at 32×32 (`resnet18-32`, timm's ResNet-18): ≥ 5,000 image pairs/s;
- CLIP, ViT-B/32 at 224×224: ≥ 1,500 samples/s;
- MAE, ViT-B/16 with 75% masking (the paper's decoder, 8 × 512): ≥ 3× the images/s of the
  same ViT trained on all patches (its forward and backward without masking or decoder).
Prints a table and writes JSON to bench/results/. `--tiny` runs tiny models on the CPU, to
check the script itself.

The two-view methods beside SimCLR (MoCo v2, BYOL, Barlow Twins, VICReg) run on the same
ResNet-18 at 32×32 and batch, bf16, each with its paper's projector; they have no target yet,
and their GPU figures are owed until a GPU machine measures them.

    python bench/train_speed.py                       # on a GPU machine: simclr, clip, mae
    python bench/train_speed.py --methods simclr,moco,byol,barlow,vicreg
    python bench/train_speed.py --tiny --steps 3      # anywhere
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from harness import machine, save

from lens_training import data as datasets
from lens_training.config import TrainConfig
from lens_training.loop import Trainer

# method → (architecture, batch) for the targets, and tiny stand-ins for --tiny
PLANS = {
    "simclr": ("resnet18-32", 1024),
    "clip": ("ViT-B-32", 256),
    "mae": ("ViT-B-16-mae", 256),
    # the two-view methods beside SimCLR, on its ResNet-18 at 32×32 and batch (no target yet;
    # figures owed until a GPU machine measures them)
    "moco": ("resnet18-32", 1024),
    "byol": ("resnet18-32", 1024),
    "barlow": ("resnet18-32", 1024),
    "vicreg": ("resnet18-32", 1024),
}
TINY = {
    "simclr": ("lens-tiny-resnet", 16),
    "clip": ("lens-tiny-clip-digits", 16),
    "mae": ("lens-tiny-vit", 16),
    "moco": ("lens-tiny-resnet", 16),
    "byol": ("lens-tiny-resnet", 16),
    "barlow": ("lens-tiny-resnet", 16),
    "vicreg": ("lens-tiny-resnet", 16),
}


TWO_VIEW = ("simclr", "moco", "byol", "barlow", "vicreg")  # images/s counts pairs of views


class SyntheticTrainer(Trainer):
    """A Trainer whose data is random pixels (two batches' worth) with ten labels."""

    def _data(self) -> tuple[datasets.ImageSet, datasets.ImageSet | None]:
        size = int(self.arch["vision_cfg"].get("image_size", 224))
        n = 2 * self.config.batch_size
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
        classes = tuple(str(i) for i in range(10))
        return datasets.ImageSet(pixels, torch.arange(n) % 10, classes, name="synthetic"), None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step: Any, device: torch.device, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds per step, peak GiB) after `warmup` untimed steps."""
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def measure(method: str, arch: str, batch: int, args: argparse.Namespace, out: Path) -> dict:
    config = TrainConfig(
        method=method,
        data="synthetic",
        arch=arch,
        out=str(out / method),
        steps=args.steps + args.warmup,
        batch_size=batch,
        device=args.device,
        baseline=False,
    )
    trainer = SyntheticTrainer(config)
    seconds, peak = timed(trainer._train_step, trainer.device, args.steps, args.warmup)
    row = {
        "method": method,
        "arch": arch,
        "batch": batch,
        "device": str(trainer.device),
        "precision": config.precision if trainer.device.type == "cuda" else "fp32",
        "images_per_s": batch / seconds,
        "peak_memory_gib": peak,
    }
    if method == "mae":
        row["unmasked_images_per_s"] = batch / unmasked_seconds(trainer, args)
        row["speedup_over_unmasked"] = row["images_per_s"] / row["unmasked_images_per_s"]
    return row


def unmasked_seconds(trainer: Trainer, args: argparse.Namespace) -> float:
    """Seconds per step of the same ViT trained on all patches: forward, backward and the
    optimiser step of the encoder alone, with the same precision and batch."""
    method: Any = trainer.method
    encoder, device = method.encoder, trainer.device
    pixels = trainer.train_set.pixels[: trainer.config.batch_size]
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4, fused=device.type == "cuda")
    bf16 = device.type == "cuda" and trainer.config.precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            tokens = encoder(method.normalize(pixels.to(device, non_blocking=True)))
        tokens.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, device, args.steps, args.warmup)[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--methods", default="simclr,clip,mae")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=0, help="every method's batch (0: its own)")
    parser.add_argument("--tiny", action="store_true", help="tiny models, to test the script")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    plans = TINY if args.tiny else PLANS
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods.split(","):
            arch, batch = plans[method]
            batch = args.batch or batch
            rows.append(measure(method, arch, batch, args, Path(folder)))
            print(rows[-1], flush=True)
    print(f"\n{'method':7} {'architecture':22} {'batch':>6} {'images/s':>10} {'peak GiB':>9}")
    for row in rows:
        unit = " pairs" if row["method"] in TWO_VIEW else ""
        print(
            f"{row['method']:7} {row['arch']:22} {row['batch']:>6} "
            f"{row['images_per_s']:10.0f} {row['peak_memory_gib']:9.2f}{unit}"
        )
        if "speedup_over_unmasked" in row:
            print(
                f"{'':7} {'same ViT, all patches':22} {row['batch']:>6} "
                f"{row['unmasked_images_per_s']:10.0f}  → masking is "
                f"{row['speedup_over_unmasked']:.2f}× faster"
            )
    save(
        {"benchmark": "train_speed", "machine": machine(torch=torch.__version__), "rows": rows},
        "train_speed",
        args.out,
    )


if __name__ == "__main__":
    main()
