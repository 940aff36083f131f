"""int8 against fp32 on a trained model: the digits CLIP of `make model`, both ways through
real servers.

Exports a training run twice (`lens export`, and `lens export --quantize int8`, calibrated on
the run's training data) into two repositories under the work folder, serves each, and embeds
the run's own split through the servers: kNN top-1 (k 20 over the training images) and
zero-shot top-1 (the digit templates) on the held-out images, and retrieval: the overlap of
each of 100 queries' top-10 among 1,000 items, int8 against fp32. Gates (issue's): top-1
within 1 point of fp32, overlap >= 0.9, parity >= 0.99. JSON to bench/results/.

    lens train clip --data mnist --arch lens-tiny-clip-digits --steps 900 --batch-size 128 \\
        --lr 2e-3 --device cpu --out runs/digits
    python bench/int8_digits.py --run runs/digits
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import machine, save, serve
from PIL import Image

from lens_client import LensClient

LENS = Path(sys.executable).with_name("lens")


def exported(run: Path, repo: Path, *quantize: str) -> dict[str, Any]:
    """`lens export` of the run into `repo` as model `digits` (nothing if there already)."""
    if not (repo / "digits" / "1").is_dir():
        command = [str(LENS), "export", str(run), "--name", "digits", "--repo", str(repo)]
        done = subprocess.run([*command, *quantize], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"export failed: {done.stderr[-2000:]}")
        print(done.stdout.strip())
    return json.loads((repo / "digits" / "1" / "manifest.json").read_text())


def pngs(pixels: torch.Tensor) -> list[bytes]:
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def measure(address: str, train: list[bytes], test: list[bytes], prompts: list[str]) -> Any:
    with LensClient(address, timeout=600) as lens:
        return (
            torch.from_numpy(np.asarray(lens.embed_images(train), np.float32)),
            torch.from_numpy(np.asarray(lens.embed_images(test), np.float32)),
            torch.from_numpy(np.asarray(lens.embed_texts(prompts), np.float32)),
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "lens-bench-int8-digits"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from lens_training import checkpoint, data
    from lens_training.evaluate import DIGIT_TEMPLATES, knn_top1

    manifests = {
        "fp32": exported(args.run, args.work / "fp32"),
        "int8": exported(args.run, args.work / "int8", "--quantize", "int8"),
    }
    saved = checkpoint.load(args.run / checkpoint.CHECKPOINT)
    config = checkpoint.config_of(saved)
    from lens_training.encoders import image_spec_of_arch

    full = data.load(config.data, image_spec_of_arch(saved["arch"]))
    train, test = full.split(config.holdout_count(len(full)), config.seed)
    assert train.labels is not None and test.labels is not None
    classes = list(full.classes)
    prompts = [t.format(c) for c in classes for t in DIGIT_TEMPLATES]
    train_images, test_images = pngs(train.pixels), pngs(test.pixels)
    results: dict[str, Any] = {}
    vectors: dict[str, Any] = {}
    for kind in manifests:
        server = serve(args.work / kind, "--max-batch-size", "64")
        try:
            vectors[kind] = measure(server.address, train_images, test_images, prompts)
        finally:
            server.process.terminate()
            server.process.wait(30)
        f_train, f_test, f_text = vectors[kind]
        weights = torch.nn.functional.normalize(
            f_text.reshape(len(classes), len(DIGIT_TEMPLATES), -1).mean(1), dim=1
        )
        results[kind] = {
            "knn_top1": knn_top1(f_train, train.labels, f_test, test.labels),
            "zero_shot_top1": float(((f_test @ weights.T).argmax(1) == test.labels).float().mean()),
        }
    queries, items = 100, 1000
    tops = {
        kind: (v[0][:queries] @ v[1][:items].T).topk(10, dim=1).indices
        for kind, v in vectors.items()
    }
    overlap = float(
        np.mean(
            [
                len(set(a.tolist()) & set(b.tolist())) / 10
                for a, b in zip(tops["fp32"], tops["int8"], strict=True)
            ]
        )
    )
    deltas = {k: results["int8"][k] - results["fp32"][k] for k in results["fp32"]}
    report = {
        "benchmark": "int8-digits",
        "machine": machine(),
        "run": str(args.run),
        "quantization": manifests["int8"]["quantization"],
        "parity": {t: manifests["int8"]["parity"][t] for t in ("image", "text")},
        "metrics": results,
        "int8_minus_fp32": deltas,
        "retrieval_top10_overlap": overlap,
        "gates": {
            "top1_within_1_point": all(abs(d) <= 0.01 for d in deltas.values()),
            "overlap_at_least_0.9": overlap >= 0.9,
            "parity": all(
                manifests["int8"]["parity"][t]["min_cosine"] >= 0.99 for t in ("image", "text")
            ),
        },
    }
    for kind, figures in results.items():
        print(f"{kind}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    print("int8 - fp32: " + ", ".join(f"{k} {v:+.4f}" for k, v in deltas.items()))
    print(f"top-10 overlap of {queries} queries over {items} items: {overlap:.3f}")
    for tower in ("image", "text"):
        figures = manifests["int8"]["parity"][tower]
        print(f"{tower} parity {figures['min_cosine']:.6f} (gate {figures['threshold']})")
    print("gates: " + json.dumps(report["gates"]))
    save(report, "int8-digits", args.out)


if __name__ == "__main__":
    main()
