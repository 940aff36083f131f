"""`lens train` and `lens export`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from lens_client.cli_common import (
    Repo,
    app,
    describe_version,
    fail,
    written,
)

DEFAULT_ARCH = {"clip": "lens-tiny-clip", "simclr": "lens-tiny-resnet", "mae": "lens-tiny-vit"}


@app.command()
def train(
    method: Annotated[str, typer.Argument(help="clip, simclr or mae.")],
    data: Annotated[
        str,
        typer.Option(
            help="mnist, digits, an image folder (class "
            "sub-folders), a .jsonl/.csv of path,caption, or .tar "
            "shards."
        ),
    ],
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture: a name in training/configs, an open_clip model, or a .json config."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (checkpoint, metrics.jsonl).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps (0: from --epochs).")] = 0,
    epochs: Annotated[float, typer.Option(help="Passes over the training split.")] = 1.0,
    batch_size: Annotated[
        int, typer.Option(help="Global batch (all ranks, all accumulation steps).")
    ] = 256,
    accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (0: the method's).")] = 0.0,
    optimizer: Annotated[str, typer.Option(help="adamw or lars (default: the paper's).")] = "",
    temperature: Annotated[
        float, typer.Option(help="NT-Xent temperature (SimCLR); 0.2 learns faster on digits.")
    ] = 0.5,
    holdout: Annotated[
        float, typer.Option(help="Held-out images: a count, or a fraction < 1.")
    ] = 1000,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option(help="bf16 (autocast on a GPU) or fp32.")] = "bf16",
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps (0: at the end).")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its checkpoint.")
    ] = False,
    init: Annotated[str, typer.Option(help="Start from a repository version NAME[:VERSION].")] = "",
    export: Annotated[str, typer.Option(help="Export the result as a new version of NAME.")] = "",
    if_missing: Annotated[
        bool, typer.Option(help="With --export: do nothing if NAME already has a version.")
    ] = False,
    repo: Repo = Path("models"),
) -> None:
    """Train a CLIP, SimCLR or MAE encoder; evaluate it against its random init."""
    from lens_training.loop import TrainConfig, Trainer, TrainError

    if method not in DEFAULT_ARCH:
        fail(f"unknown method {method!r}: use clip, simclr or mae", 2)
    if if_missing and export:
        from lens_server.repository import Repository

        repository = Repository(repo)
        if export in repository.models():
            version = repository.latest(export)
            typer.echo(
                f"{export}: version {version} is already in {repo} "
                f"({describe_version(repository, export, version)})"
            )
            return
    if out is None:
        if resume:
            fail("--resume needs --out RUN_DIR", 2)
        from datetime import datetime

        out = Path("runs") / f"{method}-{datetime.now():%Y%m%d-%H%M%S}"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        config = TrainConfig(
            method=method,
            data=data,
            arch=arch or ("" if init else DEFAULT_ARCH[method]),
            out=str(out),
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            accum=accum,
            lr=lr,
            optimizer=optimizer,
            temperature=temperature,
            holdout=holdout,
            seed=seed,
            device=device,
            precision=precision,
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            init=init,
            repo=str(repo),
        )
        result = Trainer(config, resume=resume).run()
    except TrainError as e:
        fail(str(e))
    summary = {
        "run": str(out),
        "steps": result["steps"],
        "seconds": round(result["seconds"], 1),
        "final_loss": result["final_loss"],
        "eval": result["eval"],
        "random_init": result["baseline"],
    }
    typer.echo(json.dumps(summary))
    if export:
        _export(out, export, repo)


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="A training run folder.")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    repo: Repo = Path("models"),
) -> None:
    """Export a trained run as the next version of NAME (parity-checked)."""
    _export(run, name, repo)


def _export(run: Path, name: str, repo: Path) -> None:
    from lens_server.errors import LensError
    from lens_server.repository import Repository
    from lens_training.export import ParityError
    from lens_training.export.trained import export_run
    from lens_training.loop import TrainError

    repository = Repository(repo)
    try:
        version, path = export_run(repository, run, name)
    except (ParityError, LensError, TrainError, OSError) as e:
        fail(f"export failed, nothing written: {e}")
    written(repository, name, version, path)
