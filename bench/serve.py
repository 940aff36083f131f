"""Serving overhead: the server over gRPC against ONNX Runtime called in-process.

Measures, on the same machine, model version and inputs, in one run:
- images/s and texts/s through `lens serve` with N concurrent clients (JPEG bytes in, vectors
  out), against the same work done in-process (lens preprocessing on a thread pool of the
  same size, then the ONNX Runtime session on batches of the same size);
- for a model imported from open_clip, images/s of open_clip itself in-process (its own
  preprocess on a thread pool of the same size, then `encode_image` in torch, fp32, on
  batches of the same size): what a user gets without a server;
- p50/p99 latency of single-image requests, one at a time.
Rounds alternate in-process and server runs and keep each side's best, so a noisy neighbour
hurts both alike. Prints a table and writes JSON to bench/results/.

    python bench/serve.py --repo models --model clip-vit-b-32
"""

from __future__ import annotations

import argparse
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from harness import machine, save, start_server
from PIL import Image

from lens_client import LensClient
from lens_server.config import RuntimeConfig
from lens_server.preprocess import ImagePreprocessor, TextTokenizer
from lens_server.repository import Repository
from lens_server.runtime import OnnxTower

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


def jpeg_inputs(count: int) -> list[bytes]:
    """`count` 640×480 JPEGs (quality 90) made from real photos."""
    from skimage import data

    base = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)()).convert("RGB").resize((640, 480))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        base.append(buffer.getvalue())
    return [base[i % len(base)] for i in range(count)]


def text_inputs(count: int) -> list[str]:
    subjects = ("a cat", "two dogs", "a red car", "an astronaut", "a cup of coffee", "a rocket")
    places = ("on a sofa", "in the snow", "at night", "in space", "on a table", "by the sea")
    return [
        f"a photo of {subjects[i % 6]} {places[(i // 6) % 6]}, number {i}" for i in range(count)
    ]


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def in_process(
    repo: Path, model: str, images: list[bytes], texts: list[str], batch: int, workers: int
) -> dict[str, float]:
    """The same work without a server: preprocess on `workers` threads, run ORT per batch."""
    repository = Repository(repo)
    version = repository.latest(model)
    manifest, folder = repository.manifest(model, version), repository.path(model, version)
    config = RuntimeConfig(decode_workers=workers)
    result: dict[str, float] = {}
    with ThreadPoolExecutor(workers) as pool:
        if manifest.image:
            pre = ImagePreprocessor(manifest.image)
            tower = OnnxTower(folder / manifest.image.file, config, manifest.dim)
            tower(np.stack([pre(images[0])]))  # warm-up
            start = time.perf_counter()
            for chunk in batches(images, batch):
                tower(np.stack(list(pool.map(pre, chunk))))
            result["images_per_s"] = len(images) / (time.perf_counter() - start)
            pixels = np.stack([pre(b) for b in images[:batch]])
            start = time.perf_counter()
            rounds = max(1, len(images) // batch)
            for _ in range(rounds):
                tower(pixels)
            result["model_only_images_per_s"] = rounds * batch / (time.perf_counter() - start)
        if manifest.text:
            tokenize = TextTokenizer(manifest.text, folder / manifest.text.tokenizer)
            tower = OnnxTower(folder / manifest.text.file, config, manifest.dim)
            tower(tokenize(texts[:1]))
            start = time.perf_counter()
            for chunk in batches(texts, batch):
                tower(tokenize(chunk))
            result["texts_per_s"] = len(texts) / (time.perf_counter() - start)
    return result


def open_clip_torch(arch: str, images: list[bytes], batch: int, workers: int) -> dict[str, float]:
    """open_clip's own pipeline in-process: PIL decode + its preprocess on `workers`
    threads, `encode_image` under torch.inference_mode. The weights do not change the cost."""
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(arch)
    model.eval()

    def prepare(data: bytes) -> torch.Tensor:
        return preprocess(Image.open(io.BytesIO(data)))

    with ThreadPoolExecutor(workers) as pool, torch.inference_mode():
        model.encode_image(torch.stack([prepare(images[0])]))  # warm-up
        start = time.perf_counter()
        for chunk in batches(images, batch):
            model.encode_image(torch.stack(list(pool.map(prepare, chunk))))
        return {"images_per_s": len(images) / (time.perf_counter() - start)}


def through_server(
    address: str, images: list[bytes], texts: list[str], batch: int, clients: int
) -> dict[str, float]:
    """`clients` threads share the inputs, each sending requests of `batch` inputs."""
    result: dict[str, float] = {}
    with LensClient(address, timeout=600) as lens:
        lens.embed_texts(texts[:1])  # connect
        for kind, items, call in (
            ("images", images, lens.embed_images),
            ("texts", texts, lens.embed_texts),
        ):
            if not items:
                continue
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(
                    pool.map(
                        lambda chunk, call=call: call(chunk, batch_size=batch),
                        batches(items, batch),
                    )
                )
            result[f"{kind}_per_s"] = len(items) / (time.perf_counter() - start)
    return result


def latency(address: str, image: bytes, requests: int) -> dict[str, float]:
    with LensClient(address) as lens:
        lens.embed_images([image])
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            lens.embed_images([image])
            times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=Path("models"))
    parser.add_argument("--model", default="clip-vit-b-32")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-requests", type=int, default=100)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    images, texts = jpeg_inputs(args.images), text_inputs(args.texts)
    process, address = start_server(
        args.repo,
        "--default-model",
        args.model,
        "--max-batch-size",
        str(args.batch),
        "--decode-workers",
        str(args.workers),
    )
    source = Repository(args.repo).manifest(args.model, Repository(args.repo).latest(args.model))
    arch = source.source.get("arch") if source.source.get("type") == "openclip" else None
    local: list[dict[str, float]] = []
    served: list[dict[str, float]] = []
    torch_side: list[dict[str, float]] = []
    try:
        for _ in range(args.rounds):
            local.append(in_process(args.repo, args.model, images, texts, args.batch, args.workers))
            served.append(through_server(address, images, texts, args.batch, args.clients))
            if arch:
                torch_side.append(open_clip_torch(arch, images, args.batch, args.workers))
        lat = latency(address, images[0], args.latency_requests)
    finally:
        process.terminate()
        process.wait(30)

    best = {k: max(r[k] for r in local) for k in local[0]}
    best_served = {k: max(r[k] for r in served) for k in served[0]}
    report = {
        "benchmark": "serve",
        "machine": machine(
            onnxruntime=ort.__version__, providers=",".join(ort.get_available_providers())
        ),
        "model": args.model,
        "settings": {k: v for k, v in vars(args).items() if k not in ("repo", "out")},
        "in_process": best,
        "server": best_served,
        "ratios": {k: best_served[k] / best[k] for k in best_served if k in best},
        "open_clip_torch": max((r["images_per_s"] for r in torch_side), default=None),
        "latency_single_image": lat,
        "rounds": {"in_process": local, "server": served, "open_clip_torch": torch_side},
    }
    if report["open_clip_torch"]:
        report["ratios"]["images_per_s_vs_open_clip_torch"] = (
            best_served["images_per_s"] / report["open_clip_torch"]
        )
        # Best-of favours the noisier side; the medians of the rounds say the same or not.
        medians = [
            float(np.median([r["images_per_s"] for r in rounds])) for rounds in (served, torch_side)
        ]
        report["ratios"]["median_images_per_s_vs_open_clip_torch"] = medians[0] / medians[1]
    print(f"{'':28}{'in-process':>12}{'server':>12}{'ratio':>8}")
    for key, ratio in report["ratios"].items():
        if key in best:
            print(f"{key:28}{best[key]:12.1f}{best_served[key]:12.1f}{ratio:8.1%}")
    if report["open_clip_torch"]:
        print(
            f"{'open_clip in torch, images/s':28}{report['open_clip_torch']:12.1f}"
            f"{best_served['images_per_s']:12.1f}"
            f"{report['ratios']['images_per_s_vs_open_clip_torch']:8.1%}"
        )
    if report["open_clip_torch"]:
        median = report["ratios"]["median_images_per_s_vs_open_clip_torch"]
        print(f"{'same, medians of the rounds':28}{'':24}{median:8.1%}")
    if "model_only_images_per_s" in best:
        print(f"{'model only, images/s':28}{best['model_only_images_per_s']:12.1f}")
    print(f"single image latency: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms")
    save(report, f"serve-{args.model}", args.out)


if __name__ == "__main__":
    main()
