"""Image decoding and preprocessing: Pillow on a thread pool against batches on a torch device.

Measures, on the same 640×480 JPEGs (quality 90, from real photos), in one run:
- images/s of `ImagePreprocessor` (Pillow decode, resize, crop, normalise) on a thread pool of
  `--workers` threads;
- images/s of `DevicePreprocessor`: `admit` (header checks) on the same thread pool, then
  batches of `--batch` decoded (nvJPEG on a GPU, libjpeg-turbo on the CPU) and preprocessed on
  `--device`; on CUDA the clock stops after a synchronise;
- how far the device's pixels are from Pillow's: max and mean |difference| in x/255 units.
Rounds alternate the two sides and keep each side's best. Prints a table and writes JSON to
bench/results/.

    python bench/decode.py --images 512 --batch 64 --device cuda
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from harness import machine, save
from serve import jpeg_inputs

from lens_server.config import Limits
from lens_server.preprocess import ImagePreprocessor
from lens_server.preprocess.device import DevicePreprocessor
from lens_server.repository.manifest import ImageSpec

# open_clip's ViT-B-32 evaluation transform.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def pillow_rate(cpu: ImagePreprocessor, images: list[bytes], pool: ThreadPoolExecutor) -> float:
    start = time.perf_counter()
    list(pool.map(cpu, images))
    return len(images) / (time.perf_counter() - start)


def device_rate(
    device: DevicePreprocessor, images: list[bytes], pool: ThreadPoolExecutor, batch: int
) -> dict[str, float]:
    """images/s through admit + the device, and the seconds each part took."""
    synchronise = torch.cuda.synchronize if device.device.type == "cuda" else lambda: None
    start = time.perf_counter()
    items = list(pool.map(device.admit, images))
    admitted = time.perf_counter()
    for at in range(0, len(items), batch):
        pixels, errors = device(items[at : at + batch])
        assert not errors, errors
    synchronise()
    done = time.perf_counter()
    del pixels
    return {
        "images_per_s": len(images) / (done - start),
        "admit_s": admitted - start,
        "device_s": done - admitted,
    }


def tolerance(cpu: ImagePreprocessor, device: DevicePreprocessor, images: list[bytes]) -> dict:
    """max and mean |device - Pillow| in x/255 units (before mean/std), over `images`."""
    std = np.asarray(STD, dtype=np.float32).reshape(3, 1, 1)
    pixels, _ = device([device.admit(data) for data in images])
    got = pixels.cpu().numpy()
    diff = np.stack([np.abs(g - cpu(data)) * std for g, data in zip(got, images, strict=True)])
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--interpolation", default="bicubic")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    spec = ImageSpec(size=args.size, mean=MEAN, std=STD, interpolation=args.interpolation)
    limits = Limits()
    cpu = ImagePreprocessor(spec, limits)
    device = DevicePreprocessor(spec, limits, args.device, cpu)
    images = jpeg_inputs(args.images)
    pillow: list[float] = []
    on_device: list[dict[str, float]] = []
    with ThreadPoolExecutor(args.workers) as pool:
        device_rate(device, images[: args.batch], pool, args.batch)  # warm-up (CUDA, nvJPEG)
        for _ in range(args.rounds):
            pillow.append(pillow_rate(cpu, images, pool))
            on_device.append(device_rate(device, images, pool, args.batch))
    best = max(on_device, key=lambda r: r["images_per_s"])
    pixels = tolerance(cpu, device, images[: min(len(images), 64)])
    name = torch.cuda.get_device_name() if device.device.type == "cuda" else "cpu"
    report = {
        "images": args.images,
        "image_size": "640x480 JPEG q90",
        "spec": {"size": args.size, "interpolation": args.interpolation, "resize": "shortest"},
        "batch": args.batch,
        "workers": args.workers,
        "device": str(device.device),
        "device_name": name,
        "pillow_images_per_s": max(pillow),
        "device_images_per_s": best["images_per_s"],
        "device_admit_s": best["admit_s"],
        "device_batches_s": best["device_s"],
        "pixel_difference": pixels,
        "rounds": {"pillow": pillow, "device": on_device},
        "machine": machine(
            torch=torch.__version__,
            torchvision=torchvision.__version__,
            pillow=PIL.__version__,
            torch_threads=str(torch.get_num_threads()),
        ),
    }
    print(f"{'':<34}{'images/s':>10}")
    print(f"{f'Pillow, {args.workers} threads':<34}{max(pillow):>10.1f}")
    print(f"{f'{name}, batches of {args.batch}':<34}{best['images_per_s']:>10.1f}")
    print(
        f"device vs Pillow: max |diff| {pixels['max_abs'] * 255:.2f}/255, "
        f"mean {pixels['mean_abs'] * 255:.4f}/255"
    )
    save(report, f"decode-{device.device.type}", args.out)


if __name__ == "__main__":
    main()
