"""`lens finetune`: fine-tune an exported image encoder end to end with a linear head on a few
labels (the semi-supervised recipe of Chen et al., "Big Self-Supervised Models are Strong
Semi-Supervised Learners": start from the self-supervised encoder, fine-tune on the labelled
fraction).

The trainable weights come from the version's own `checkpoint.pt` (which `lens export` writes
beside every trained version); imported models have none and are refused. The head sees what the
server will feed a saved classifier, the L2-normalised embedding, and starts from the linear
probe on the frozen encoder (logistic regression), so the two are compared on the same held-out
images. The fine-tuned encoder becomes the next version of `--name` (exported and
parity-checked as `lens export` does), the head a saved classifier of kind `linear` whose
weights for that version are `[W | b]`, (C, D+1), with the labelled images kept as examples.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from lens_client.cli_common import Repo, fail


@dataclass(frozen=True)
class Result:
    probe: float  # held-out accuracy of the linear probe on the frozen encoder
    finetuned: float  # held-out accuracy after fine-tuning encoder and head
    labelled: int
    heldout: int
    seconds: float
    version: int = 0


def finetune_command(
    init: Annotated[str, typer.Option(help="NAME[:VERSION] of a trained image encoder.")],
    data: Annotated[str, typer.Option(help="A folder of class sub-folders, or digits/mnist.")],
    name: Annotated[
        str | None, typer.Option(help="Model to add the version to; default: --init's.")
    ] = None,
    classifier: Annotated[
        str | None, typer.Option(help="Saved classifier name; default: NAME-finetuned.")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="Comma list of the class sub-folders to use, in order.")
    ] = None,
    labels_from_folders: Annotated[
        bool, typer.Option(help="Take the labels from the sub-folders (the default).")
    ] = True,
    label_fraction: Annotated[
        float, typer.Option(help="Fraction of the training images whose labels are used.")
    ] = 1.0,
    holdout: Annotated[float, typer.Option(help="Fraction held out for accuracy.")] = 0.2,
    steps: Annotated[int, typer.Option(help="Fine-tuning steps.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed of the split and the steps.")] = 0,
    repo: Repo = Path("models"),
) -> None:
    """Fine-tune NAME[:VERSION]'s encoder with a linear head on a labelled folder; write the
    encoder as a new version and the head as a saved classifier."""
    from lens_server.errors import LensError
    from lens_training.config import TrainError
    from lens_training.data import DataError
    from lens_training.export import ParityError

    if not 0 < label_fraction <= 1:
        fail(f"--label-fraction {label_fraction} must be in (0, 1]", 2)
    if not 0 < holdout < 1:
        fail(f"--holdout {holdout} must be in (0, 1)", 2)
    if steps < 0 or batch_size < 1:
        fail(f"--steps {steps} / --batch-size {batch_size}: need steps >= 0, batch >= 1", 2)
    wanted = [s.strip() for s in labels.split(",")] if labels else None
    try:
        job = prepare(repo, init, data, wanted, label_fraction, holdout, seed)
    except (TrainError, DataError, LensError, ValueError) as e:
        fail(str(e), 2)
    target = name or init.partition(":")[0]
    head = classifier or f"{target}-finetuned"
    from lens_server.classifiers import ClassifierStore

    if head in ClassifierStore(repo).names():
        fail(f"--classifier {head}: a saved classifier of that name exists", 2)
    try:
        result = run(job, repo, target, head, steps, batch_size, lr)
    except (ParityError, LensError, TrainError, OSError) as e:
        fail(f"fine-tuning failed: {e}")
    typer.echo(
        json.dumps(
            {
                "linear_probe": round(result.probe, 4),
                "finetuned": round(result.finetuned, 4),
                "labelled": result.labelled,
                "heldout": result.heldout,
                "seconds": round(result.seconds, 1),
            }
        )
    )
    typer.echo(f"{target}: version {result.version} written; classifier {head}")


@dataclass
class Job:
    saved: dict[str, Any]
    method: Any
    classes: tuple[str, ...]
    train_pixels: Any
    train_labels: Any
    test_pixels: Any
    test_labels: Any
    seed: int


def prepare(
    repo: Path,
    init: str,
    source: str,
    wanted: list[str] | None,
    fraction: float,
    holdout: float,
    seed: int,
) -> Job:
    """Everything checked before any step: the version's weights, the data and its labels."""
    import torch

    from lens_training import checkpoint
    from lens_training.config import TrainError
    from lens_training.data import load
    from lens_training.encoders import image_spec_of_arch
    from lens_training.methods import build

    saved = checkpoint.of_version(repo, init)
    if "method" not in saved or not saved.get("arch", {}).get("vision_cfg"):
        raise TrainError(f"--init {init}: not an image encoder lens trained")
    spec = image_spec_of_arch(saved["arch"])
    images = load(source, spec)
    if images.labels is None or not images.classes:
        raise TrainError(f"--data {source}: no class sub-folders to take labels from")
    classes = images.classes
    if wanted is not None:
        if len(set(wanted)) != len(wanted) or any(not w for w in wanted):
            raise TrainError(f"--labels {','.join(wanted)}: empty or repeated label")
        missing = [w for w in wanted if w not in classes]
        if missing:
            raise TrainError(
                f"--labels {','.join(missing)}: no such sub-folder in {source} "
                f"(it has {', '.join(classes)})"
            )
        classes = tuple(wanted)
    index = [images.classes.index(c) for c in classes]
    counts = {c: int((images.labels == i).sum()) for c, i in zip(classes, index, strict=True)}
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise TrainError(f"--data {source}: class {', '.join(empty)} has no images")
    if len(classes) < 2:
        raise TrainError(f"--labels: {', '.join(classes)} is one class; need at least two")
    keep = torch.isin(images.labels, torch.tensor(index))
    pixels = images.pixels[keep]
    remap = {old: new for new, old in enumerate(index)}
    targets = torch.tensor([remap[int(y)] for y in images.labels[keep]])
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    cut = max(1, round(holdout * len(order)))
    test, train = order[:cut], order[cut:]
    labelled = train[: max(len(classes), round(fraction * len(train)))]
    if set(targets[labelled].tolist()) != set(range(len(classes))):
        raise TrainError(
            f"--label-fraction {fraction}: the {len(labelled)} labelled images miss a class"
        )
    settings = checkpoint.config_of(saved).method_settings() if "config" in saved else {}
    method = build(saved["method"], saved["arch"], **settings)
    method.load_state_dict(saved["model"])
    return Job(
        saved,
        method,
        classes,
        pixels[labelled],
        targets[labelled],
        pixels[test],
        targets[test],
        seed,
    )


def _embed(job: Job, pixels: Any, batch: int = 256) -> Any:
    import torch
    import torch.nn.functional as F

    encoder = job.method.image_encoder()
    with torch.no_grad():
        return torch.cat(
            [
                F.normalize(encoder(job.method.normalize(pixels[i : i + batch])), dim=-1)
                for i in range(0, len(pixels), batch)
            ]
        )


def probe(job: Job) -> tuple[Any, Any, float]:
    """The linear probe on the frozen, L2-normalised embedding: (W, b, held-out accuracy)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    job.method.eval()
    x, y = _embed(job, job.train_pixels).numpy(), job.train_labels.numpy()
    fit = LogisticRegression(C=10.0, max_iter=2000).fit(x, y)
    accuracy = float(
        (fit.predict(_embed(job, job.test_pixels).numpy()) == job.test_labels.numpy()).mean()
    )
    weight = torch.tensor(fit.coef_, dtype=torch.float32)
    bias = torch.tensor(fit.intercept_, dtype=torch.float32)
    if len(job.classes) == 2:  # sklearn's binary fit is one row: the two logits are ±half
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    return weight, bias, accuracy


def tune(job: Job, weight: Any, bias: Any, steps: int, batch: int, lr: float) -> tuple[Any, float]:
    """Encoder and head fine-tuned together from the probe: (head, held-out accuracy)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(job.seed)
    encoder = job.method.image_encoder()
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(
        [
            {"params": list(encoder.parameters()), "lr": lr},
            {"params": list(head.parameters()), "lr": lr * 10},
        ],
        weight_decay=0.0,
    )
    n = len(job.train_labels)
    generator = torch.Generator().manual_seed(job.seed)
    job.method.train()
    for _ in range(steps):
        pick = torch.randint(0, n, (min(batch, n),), generator=generator)
        pixels = job.train_pixels[pick]
        z = F.normalize(encoder(job.method.normalize(pixels)), dim=-1)
        loss = F.cross_entropy(head(z), job.train_labels[pick])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    job.method.eval()
    with torch.no_grad():
        logits = head(_embed(job, job.test_pixels))
    accuracy = float((logits.argmax(-1) == job.test_labels).float().mean())
    return head, accuracy


def run(
    job: Job, repo: Path, name: str, classifier: str, steps: int, batch: int, lr: float
) -> Result:
    """Probe, fine-tune, export the encoder and save the head."""
    import numpy as np
    import torch

    from lens_server.classifiers import ClassifierSpec, ClassifierStore
    from lens_server.repository import Repository
    from lens_training import checkpoint
    from lens_training.checkpoint import CHECKPOINT
    from lens_training.export.trained import export_run

    start = time.perf_counter()
    weight, bias, probed = probe(job)
    head, tuned = tune(job, weight, bias, steps, batch, lr)
    seconds = time.perf_counter() - start
    state = {**checkpoint.weights_only(job.saved), "model": job.method.state_dict()}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint.save(Path(folder) / CHECKPOINT, state)
        version, _ = export_run(Repository(repo), Path(folder), name)
    examples = [
        [_png(p) for p, y in zip(job.train_pixels, job.train_labels, strict=True) if int(y) == c]
        for c in range(len(job.classes))
    ]
    spec = ClassifierSpec(name=classifier, model=name, kind="linear", labels=job.classes)
    store = ClassifierStore(repo)
    store.create(spec, examples)
    with torch.no_grad():
        weights = torch.cat([head.weight, head.bias[:, None]], dim=1).numpy()
    store.save_weights(spec, version, np.asarray(weights, dtype=np.float32))
    return Result(probed, tuned, len(job.train_labels), len(job.test_labels), seconds, version)


def _png(pixels: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()
