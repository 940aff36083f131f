"""Classification quality and cost, through the real server.

Trains the quick CLIP and SimCLR of training/quick.py on `mnist` (4,000 / 1,000), exports
them, serves them, and measures on the 1,000 held-out digits:
- zero-shot top-1 of the CLIP with the `simple` template, the digit template ensemble and
  the 80 `openai-imagenet` templates;
- few-shot top-1 at 1, 5 and 10 shots per class (examples drawn from the training split) for
  the CLIP and the SimCLR encoder;
- images/s of Classify with a saved 1,000-label classifier against Embed on the same images,
  in alternating rounds of one run.

    python bench/classify.py
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import machine, save, start_server
from PIL import Image

from lens_client import LensClient
from lens_server.repository import Repository
from lens_training.config import TrainConfig
from lens_training.evaluate import DIGIT_TEMPLATES
from lens_training.export.trained import export_run
from lens_training.loop import Trainer
from lens_training.quick import PLANS


def png(pixels: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def accuracy(results: list[list[dict]], truth: list[str]) -> float:
    return float(np.mean([r[0]["label"] == t for r, t in zip(results, truth, strict=True)]))


def throughput(lens: LensClient, model: str, queries: list[bytes], args) -> dict[str, float]:
    """Classify with a saved 1,000-label classifier against Embed: the same requests of 64
    images, one at a time, in alternating rounds; each keeps its best."""
    lens.create_classifier(
        f"thousand-{model}", labels=[f"class {i}" for i in range(1000)], model=model
    )
    images = (queries * (args.throughput_images // len(queries) + 1))[: args.throughput_images]
    embed_rates, classify_rates = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for i in range(0, len(images), 64):
            lens.embed_images(images[i : i + 64], model=model, batch_size=64)
        embed_rates.append(len(images) / (time.perf_counter() - start))
        start = time.perf_counter()
        for i in range(0, len(images), 64):
            lens.classify(images[i : i + 64], classifier=f"thousand-{model}", top_k=5)
        classify_rates.append(len(images) / (time.perf_counter() - start))
    result = {
        "embed_images_per_s": max(embed_rates),
        "classify_1000_labels_images_per_s": max(classify_rates),
        "ratio": max(classify_rates) / max(embed_rates),
    }
    print(
        f"{model}: Embed {result['embed_images_per_s']:.1f} images/s, Classify (1,000 labels) "
        f"{result['classify_1000_labels_images_per_s']:.1f} images/s: {result['ratio']:.1%}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--shots", default="1,5,10")
    parser.add_argument("--throughput-images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--throughput-repo",
        type=Path,
        default=None,
        help="also measure Classify against Embed on a model of this repository",
    )
    parser.add_argument("--throughput-model", default="clip-vit-b-32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    repo = Repository(folder / "models")
    trainers = {}
    for method in ("clip", "simclr"):
        config = TrainConfig(
            method=method,
            data="mnist",
            out=str(folder / method),
            holdout=1000,
            seed=0,
            device="cpu",
            baseline=False,
            **PLANS[method],
        )
        trainers[method] = Trainer(config)
        trainers[method].run()
        export_run(repo, folder / method, f"digits-{method}")
        print(f"trained and exported digits-{method}", flush=True)
    train, test = trainers["clip"].train_set, trainers["clip"].test_set
    assert test is not None and test.labels is not None and train.labels is not None
    names = test.classes
    queries = [png(p) for p in test.pixels]
    truth = [names[int(y)] for y in test.labels]
    rng = np.random.default_rng(0)
    by_class = {c: np.flatnonzero(train.labels.numpy() == c) for c in range(len(names))}

    process, address = start_server(folder / "models", "--max-batch-size", "64")
    report: dict = {
        "benchmark": "classify",
        "machine": machine(torch=torch.__version__),
        "zero_shot": {},
        "few_shot": {},
    }
    try:
        with LensClient(address, timeout=600) as lens:
            for label, templates in (
                ("simple", "simple"),
                ("digit ensemble", DIGIT_TEMPLATES),
                ("openai-imagenet", "openai-imagenet"),
            ):
                results = lens.classify(
                    queries, labels=list(names), templates=templates, top_k=1, model="digits-clip"
                )
                report["zero_shot"][label] = accuracy(results, truth)
                print(f"zero-shot, {label}: {report['zero_shot'][label]:.3f}", flush=True)
            for method in ("clip", "simclr"):
                for shots in (int(s) for s in args.shots.split(",")):
                    examples = {
                        names[c]: [
                            png(train.pixels[i]) for i in rng.choice(idx, shots, replace=False)
                        ]
                        for c, idx in by_class.items()
                    }
                    name = f"{method}-{shots}-shot"
                    lens.create_classifier(name, examples=examples, model=f"digits-{method}")
                    score = accuracy(lens.classify(queries, classifier=name, top_k=1), truth)
                    report["few_shot"][name] = score
                    print(f"few-shot, {method}, {shots} per class: {score:.3f}", flush=True)
            report["throughput"] = {"digits-clip": throughput(lens, "digits-clip", queries, args)}
    finally:
        process.terminate()
        process.wait(30)
    if args.throughput_repo:
        process, address = start_server(args.throughput_repo, "--max-batch-size", "64")
        try:
            with LensClient(address, timeout=3600) as lens:
                report["throughput"][args.throughput_model] = throughput(
                    lens, args.throughput_model, queries, args
                )
        finally:
            process.terminate()
            process.wait(30)
    save(report, "classify", args.out)


if __name__ == "__main__":
    main()
