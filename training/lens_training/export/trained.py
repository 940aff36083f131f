"""`lens export RUN_DIR`: a trained run → a servable version in the repository.

SimCLR, MoCo, BYOL, Barlow Twins and VICReg export their online encoder without projection
heads, predictors, momentum networks or queue; MAE its encoder on all patches (no
masking), decoder dropped, mean-pooled and whitened as it was evaluated; CLIP both towers and the
tokenizer. Parity against the PyTorch model is checked and recorded; the evaluation metrics,
the training configuration and the dataset go into the manifest, and the weights
(`checkpoint.pt`, without optimiser state) beside it so the version can be fine-tuned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens_server.preprocess import ImagePreprocessor
from lens_server.repository import ImageSpec, Manifest, Repository, TextSpec
from lens_training import checkpoint
from lens_training.checkpoint import CHECKPOINT
from lens_training.config import TrainError
from lens_training.encoders import image_spec_of_arch
from lens_training.export import calibration
from lens_training.export import tokenizer as tokenizers
from lens_training.export.quantize import Quantize
from lens_training.export.towers import Encode, TowerSource, export_version
from lens_training.methods import ClipMethod, Method, build

log = logging.getLogger(__name__)


def load_run(run: Path) -> tuple[dict[str, Any], Method]:
    """The run's checkpoint and its method with the trained weights, in eval mode."""
    path = run / CHECKPOINT if run.is_dir() else run
    if not path.is_file():
        raise TrainError(f"{run}: no {CHECKPOINT} (train first, or point at a run folder)")
    saved = checkpoint.load(path)
    # the settings that shape the weights (projector width, MoCo's queue) are the run's
    settings = checkpoint.config_of(saved).method_settings() if "config" in saved else {}
    method = build(saved["method"], saved["arch"], **settings)
    method.load_state_dict(saved["model"])
    return saved, method.eval()


def export_run(
    repo: Repository, run: Path, name: str, quantize: Quantize | None = None
) -> tuple[int, Path]:
    """Exports the run as the next version of `name`; int8 with `quantize`, calibrated on the
    run's training data unless it names a calibration set."""
    saved, method = load_run(run)
    spec = image_spec_of_arch(saved["arch"])
    preprocess = ImagePreprocessor(spec)
    encoder = method.image_encoder()
    with torch.no_grad():
        dim = int(encoder(torch.zeros(1, 3, spec.size, spec.size)).shape[-1])

    @torch.no_grad()
    def reference_images(images: Sequence[bytes]) -> np.ndarray:
        return encoder(torch.from_numpy(np.stack([preprocess(b) for b in images]))).numpy()

    text, text_source, logit_scale = None, None, None
    if isinstance(method, ClipMethod):
        import open_clip

        tokenizer = open_clip.SimpleTokenizer(context_length=method.model.context_length)
        text = TextSpec(
            context_length=method.model.context_length,
            sot_id=tokenizer.sot_token_id,
            eot_id=tokenizer.eot_token_id,
        )
        logit_scale = float(method.model.logit_scale.exp().item())

        @torch.no_grad()
        def reference_texts(texts: Sequence[str]) -> np.ndarray:
            return method.encode_text(tokenizer(list(texts))).numpy()

        text_source = TowerSource(
            Encode(method.model, lambda m, x: m.encode_text(x)), reference_texts
        )

    result = saved.get("result", {})
    config = saved.get("config", {})
    manifest = Manifest(
        name=name,
        version=0,
        kind=saved["method"],
        dim=dim,
        image=spec,
        text=text,
        logit_scale=logit_scale,
        source={"type": "train", "arch": saved["arch_name"], "run": str(run.resolve())},
        extra={
            "training": config,
            "steps": saved.get("step"),
            "metrics": result.get("eval", {}),
            "baseline": result.get("baseline", saved.get("baseline", {})),
            "dataset": {"source": config.get("data"), "holdout": config.get("holdout")},
        },
    )

    def write_files(staged: Path) -> None:
        checkpoint.save(staged / CHECKPOINT, checkpoint.weights_only(saved))
        if text is not None:
            tokenizers.from_openclip(tokenizer, staged / text.tokenizer)

    return export_version(
        repo,
        manifest,
        image=TowerSource(encoder, reference_images),
        text=text_source,
        write_files=write_files,
        quantize=_with_training_data(quantize, config.get("data"), spec),
    )


def _with_training_data(
    quantize: Quantize | None, source: str | None, spec: ImageSpec
) -> Quantize | None:
    """`quantize` calibrated on the run's training data, unless it names its own set; the
    sample photos and texts (logged) where the data is no longer where the run read it."""
    if quantize is None or quantize.calibration is not None or not source:
        return quantize
    from lens_training import data

    try:
        images = data.load(source, spec)
    except (data.DataError, OSError, ImportError) as e:
        log.warning("int8 calibration on the sample photos: training data unreadable (%s)", e)
        return quantize
    chosen = calibration.training_data(source, images.pixels, images.captions, images.classes)
    return replace(quantize, calibration=chosen)
