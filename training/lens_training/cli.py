"""`lens train`, `lens export` and `lens import`: the training package's commands, registered
on the `lens` app by its entry point. Each imports torch only once it runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lens_client.cli_common import Repo, fail

if TYPE_CHECKING:
    from lens_server.repository import Repository
    from lens_training.export.quantize import Quantize


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command("export")(export_command)
    from lens_training.finetune import finetune_command

    app.command("finetune")(finetune_command)
    imports = typer.Typer(no_args_is_help=True, help="Import a model into the repository.")
    imports.command("openclip")(import_openclip)
    imports.command("hf")(import_hf)
    app.add_typer(imports, name="import")


DEFAULT_ARCH = {
    "clip": "lens-tiny-clip",
    "simclr": "lens-tiny-resnet",
    "mae": "lens-tiny-vit",
    "moco": "lens-tiny-resnet",
    "byol": "lens-tiny-resnet",
    "barlow": "lens-tiny-resnet",
    "vicreg": "lens-tiny-resnet",
}


def train(
    ctx: typer.Context,
    method: Annotated[
        str,
        typer.Argument(
            help="clip, simclr, mae, moco, byol, barlow or vicreg (finetune: see lens finetune)."
        ),
    ],
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
    plan: Annotated[
        str,
        typer.Option(
            help="quick: the method's tested CPU plan on mnist (training/quick.py); "
            "options given beside it win."
        ),
    ] = "",
    temperature: Annotated[
        float | None,
        typer.Option(
            help="InfoNCE temperature (SimCLR 0.5, MoCo 0.2; 0.2 learns faster on digits)."
        ),
    ] = None,
    queue: Annotated[
        int, typer.Option(help="MoCo: negatives kept, a multiple of the batch.")
    ] = 4096,
    momentum: Annotated[
        float | None,
        typer.Option(help="MoCo/BYOL target EMA momentum in [0, 1) (0.99, 0.996)."),
    ] = None,
    momentum_end: Annotated[
        float | None,
        typer.Option(help="Where the momentum's cosine schedule ends (0.999, 1)."),
    ] = None,
    barlow_lambda: Annotated[
        float, typer.Option(help="Barlow Twins: off-diagonal weight λ.")
    ] = 5e-3,
    predictor_lr_scale: Annotated[
        float, typer.Option(help="BYOL: the predictor learns at lr × this.")
    ] = 1.0,
    invariance_weight: Annotated[float, typer.Option(help="VICReg: invariance weight.")] = 25.0,
    variance_weight: Annotated[float, typer.Option(help="VICReg: variance weight.")] = 25.0,
    covariance_weight: Annotated[float, typer.Option(help="VICReg: covariance weight.")] = 1.0,
    projector_dim: Annotated[
        int,
        typer.Option(help="Projector width (0: MoCo 2048, BYOL 4096, Barlow/VICReg 8192)."),
    ] = 0,
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
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    init: Annotated[str, typer.Option(help="Start from a repository version NAME[:VERSION].")] = "",
    export: Annotated[str, typer.Option(help="Export the result as a new version of NAME.")] = "",
    if_missing: Annotated[
        bool, typer.Option(help="With --export: do nothing if NAME already has a version.")
    ] = False,
    repo: Repo = Path("models"),
) -> None:
    """Train an encoder (CLIP, SimCLR, MAE, MoCo v2, BYOL, Barlow Twins or VICReg); evaluate
    it against its random init."""
    from lens_training.config import TrainConfig, TrainError
    from lens_training.loop import Trainer
    from lens_training.quick import plan_settings

    if method not in DEFAULT_ARCH:
        fail(f"unknown method {method!r}: use {', '.join(DEFAULT_ARCH)}", 2)
    try:
        planned = plan_settings(plan, method) if plan else {}
    except ValueError as e:
        fail(str(e), 2)
    from_plan = {  # a plan's setting where its option was left at the default
        key: value for key, value in planned.items() if _defaulted(ctx, key)
    }
    if if_missing and export and _existing(repo, export):
        return
    if out is None:
        if resume:
            fail("--resume needs --out RUN_DIR", 2)
        from datetime import datetime

        out = Path("runs") / f"{method}-{datetime.now():%Y%m%d-%H%M%S}"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        settings = dict(
            arch=arch or ("" if init else DEFAULT_ARCH[method]),
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            accum=accum,
            lr=lr,
            optimizer=optimizer,
            temperature=temperature,
            queue=queue,
            momentum=momentum,
            momentum_end=momentum_end,
            barlow_lambda=barlow_lambda,
            predictor_lr_scale=predictor_lr_scale,
            invariance_weight=invariance_weight,
            variance_weight=variance_weight,
            covariance_weight=covariance_weight,
            projector_dim=projector_dim,
        )
        config = TrainConfig(
            method=method,
            data=data,
            out=str(out),
            **{**settings, **from_plan},
            holdout=holdout,
            seed=seed,
            device=device,
            precision=precision,
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            init=init,
            repo=str(repo),
        )
        result = Trainer(config, resume=resume, quiet=quiet).run()
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


QuantizeOption = Annotated[
    str,
    typer.Option(
        "--quantize",
        help="int8: write int8 towers (ONNX Runtime static quantization, calibrated), "
        "gated by parity to fp32; default: fp32.",
    ),
]
CalibrationOption = Annotated[
    Path | None,
    typer.Option(
        help="With --quantize: a folder of images (and .txt files of texts, one a line) to "
        "calibrate on; default: the training data, else the sample photos and texts."
    ),
]
GateOption = Annotated[
    float | None,
    typer.Option(
        help="With --quantize: the lowest cosine to the fp32 towers accepted; default 0.99, "
        "0.98 for random weights."
    ),
]


def _quantize(
    scheme: str, calibration: Path | None, gate: float | None, towers: tuple[str, ...]
) -> Quantize | None:
    """The quantization asked for, checked before any model is built (exit 2 naming the bad
    value): a calibration folder must hold inputs for each of `towers`."""
    if not scheme:
        if calibration is not None or gate is not None:
            fail("--calibration and --parity-gate need --quantize", 2)
        return None
    from lens_training.export import calibration as sets
    from lens_training.export.quantize import Quantize

    try:
        chosen = sets.folder(calibration) if calibration is not None else None
        if chosen is not None:
            for tower in towers:
                chosen.need(tower)
        return Quantize(scheme, chosen, gate)
    except ValueError as e:
        fail(str(e), 2)


def _defaulted(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was left at its default (not given on the command line or in
    the environment). By the source's name: typer's click is not always the `click` module."""
    source = ctx.get_parameter_source(name)
    return source is None or source.name in ("DEFAULT", "DEFAULT_MAP")


def export_command(
    run: Annotated[Path, typer.Argument(help="A training run folder.")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    repo: Repo = Path("models"),
    quantize: QuantizeOption = "",
    calibration: CalibrationOption = None,
    parity_gate: GateOption = None,
) -> None:
    """Export a trained run as the next version of NAME (parity-checked; int8 with
    --quantize)."""
    # a CLIP run's text tower is checked once the run is read
    _export(run, name, repo, _quantize(quantize, calibration, parity_gate, ("image",)))


def _export(run: Path, name: str, repo: Path, quantize: Quantize | None = None) -> None:
    from lens_server.errors import LensError
    from lens_server.repository import Repository
    from lens_training.config import TrainError
    from lens_training.export import ParityError
    from lens_training.export.trained import export_run

    repository = Repository(repo)
    try:
        version, path = export_run(repository, run, name, quantize)
    except (ParityError, LensError, TrainError, OSError) as e:
        fail(f"export failed, nothing written: {e}")
    _written(repository, name, version, path)


def import_openclip(
    arch: Annotated[str, typer.Option(help="open_clip architecture, e.g. ViT-B-32.")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    pretrained: Annotated[
        str | None,
        typer.Option(
            envvar="LENS_PRETRAINED",
            help="A checkpoint file or a pretrained tag; default: random weights.",
        ),
    ] = None,
    repo: Repo = Path("models"),
    if_missing: Annotated[
        bool, typer.Option(help="Do nothing if the model has a version.")
    ] = False,
    quantize: QuantizeOption = "",
    calibration: CalibrationOption = None,
    parity_gate: GateOption = None,
) -> None:
    """Import an open_clip model: export both towers to ONNX, check parity, add a version."""
    scheme = _quantize(quantize, calibration, parity_gate, ("image", "text"))
    _import(
        repo,
        name,
        if_missing,
        "openclip",
        arch=arch,
        pretrained=pretrained or None,
        quantize=scheme,
    )


def import_hf(
    folder: Annotated[Path, typer.Argument(help="A local transformers CLIPModel folder.")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    repo: Repo = Path("models"),
    if_missing: Annotated[
        bool, typer.Option(help="Do nothing if the model has a version.")
    ] = False,
    quantize: QuantizeOption = "",
    calibration: CalibrationOption = None,
    parity_gate: GateOption = None,
) -> None:
    """Import a transformers CLIPModel folder: export, check parity, add a version."""
    if not folder.is_dir():
        fail(f"{folder}: no such folder", 2)
    scheme = _quantize(quantize, calibration, parity_gate, ("image", "text"))
    _import(repo, name, if_missing, "hf", folder=folder, quantize=scheme)


def _import(repo: Path, name: str, if_missing: bool, source: str, **kwargs: object) -> None:
    from lens_server.errors import LensError
    from lens_server.repository import Repository
    from lens_training.export import ParityError

    if if_missing and _existing(repo, name):
        return
    repository = Repository(repo)
    what = kwargs.get("arch") or kwargs.get("folder")
    weights = kwargs.get("pretrained") or ("random weights" if source == "openclip" else "")
    typer.echo(
        f"importing {source} {what} as {name} ({weights or 'weights from the folder'})…", err=True
    )
    logging.basicConfig(level=logging.WARNING)
    try:
        if source == "openclip":
            from lens_training.export.openclip import import_openclip

            version, path = import_openclip(repository, name=name, **kwargs)  # type: ignore[arg-type]
        else:
            from lens_training.export.hf import import_hf

            version, path = import_hf(repository, name=name, **kwargs)  # type: ignore[arg-type]
    except (ParityError, LensError, ValueError, RuntimeError, OSError) as e:
        fail(f"import failed, nothing written: {e}")
    _written(repository, name, version, path)


def _existing(repo: Path, name: str) -> bool:
    """`--if-missing`: whether NAME already has a version (said, with what it is)."""
    from lens_server.repository import Repository

    repository = Repository(repo)
    if name not in repository.models():
        return False
    version = repository.latest(name)
    manifest = repository.manifest(name, version)
    typer.echo(f"{name}: version {version} is already in {repo} ({manifest.describe()})")
    return True


def _written(repository: Repository, name: str, version: int, path: Path) -> None:
    manifest = repository.manifest(name, version)
    typer.echo(f"{name}: version {version} written to {path} ({manifest.describe()})")
