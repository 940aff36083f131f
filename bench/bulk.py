"""Bulk embedding: `lens bulk embed` on a local Ray against the single-process paths.

On the same image files: (1) `lens bulk embed FOLDER` on a local Ray (the whole command, Ray
start included, and the run alone as its manifest times it); (2) `lens embed --image ...`
through one `lens serve` process; (3) open_clip in a plain loop (PIL, its own transform,
`encode_image` in batches, torch on every core). Prints images/s and the ratios of (1) to the
best single-process path; writes bench/results/bulk-<arch>-<time>.json.

    python bench/bulk.py                       # tiny random-init CLIP, 2000 images
    python bench/bulk.py --arch ViT-B-32 --images 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import machine, save, start_server
from PIL import Image

from lens_server.repository import Repository
from lens_training.export.openclip import import_openclip

TINY = Path(__file__).resolve().parents[1] / "training/lens_training/configs/lens-tiny-clip.json"
LENS = Path(sys.executable).with_name("lens")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "horse", "cat", "camera", "coins")


def make_images(folder: Path, n: int) -> list[Path]:
    """n JPEGs of 320-640 px: random crops of skimage's photos (seed 0)."""
    from skimage import data

    rng = np.random.default_rng(0)
    photos = [np.asarray(Image.fromarray(getattr(data, p)()).convert("RGB")) for p in PHOTOS]
    files = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(photo[y : y + ch, x : x + cw]).save(path, quality=90)
        files.append(path)
    return files


def bulk(folder: Path, repo: Path, out: Path, cpus: int) -> dict[str, float]:
    started = time.perf_counter()
    result = subprocess.run(
        [
            str(LENS),
            "bulk",
            "embed",
            str(folder),
            "--model",
            "bench",
            "--repo",
            str(repo),
            "--out",
            str(out),
            "--num-cpus",
            str(cpus),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    wall = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(result.stderr)
    manifest = json.loads(result.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "run_s": manifest["seconds"], "embedded": manifest["embedded"]}


def through_server(files: list[Path], repo: Path) -> dict[str, float]:
    process, address = start_server(repo, "--no-http")
    try:
        started = time.perf_counter()
        result = subprocess.run(
            [
                str(LENS),
                "embed",
                "--server",
                address,
                "--model",
                "bench",
                *[a for f in files for a in ("--image", str(f))],
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)
    return {"wall_s": wall, "embedded": len(result.stdout.splitlines())}


def open_clip_loop(files: list[Path], arch: str, batch: int) -> dict[str, float]:
    import open_clip
    import torch

    if arch.endswith(".json"):
        open_clip.add_model_config(arch)
        arch = Path(arch).stem
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(arch)
    model.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(files), batch):
            pixels = torch.stack([preprocess(Image.open(f)) for f in files[start : start + batch]])
            model.encode_image(pixels)
    return {"wall_s": time.perf_counter() - started, "embedded": len(files)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default=str(TINY), help="open_clip architecture or file")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    repo = Repository(work / "repo")
    import_openclip(repo, args.arch, "bench")  # random weights: speed only
    folder = work / "images"
    folder.mkdir()
    files = make_images(folder, args.images)
    paths = {
        "open_clip_loop": open_clip_loop(files, args.arch, args.batch_size),
        "lens_embed_one_server": through_server(files, repo.root),
        "bulk_ray_local": bulk(folder, repo.root, work / "out", args.cpus),
    }
    rates = {name: r["embedded"] / r["wall_s"] for name, r in paths.items()}
    rates["bulk_ray_local_run_only"] = args.images / paths["bulk_ray_local"]["run_s"]
    best = max(rates["open_clip_loop"], rates["lens_embed_one_server"])
    ratios = {
        "bulk_end_to_end_vs_best_single": rates["bulk_ray_local"] / best,
        "bulk_run_only_vs_best_single": rates["bulk_ray_local_run_only"] / best,
    }
    for name, rate in rates.items():
        print(f"{name:28s} {rate:8.1f} images/s")
    for name, ratio in ratios.items():
        print(f"{name:36s} {ratio:5.2f}x")
    save(
        {
            "arch": Path(args.arch).stem,
            "weights": "random init (speed only)",
            "images": args.images,
            "cpus": args.cpus,
            "batch_size": args.batch_size,
            "machine": machine(),
            "paths": paths,
            "images_per_s": rates,
            "ratios": ratios,
        },
        f"bulk-{Path(args.arch).stem}",
        args.out,
    )


if __name__ == "__main__":
    main()
