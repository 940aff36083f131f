"""`lens import openclip`: an open_clip model → a two-tower version in the repository."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens_server.repository import ImageSpec, Repository, TextSpec
from lens_training import checkpoint
from lens_training.checkpoint import CHECKPOINT
from lens_training.export import tokenizer as tokenizers
from lens_training.export.quantize import Quantize
from lens_training.export.towers import Encode, TowerSource, clip_manifest, export_version, pixels

log = logging.getLogger(__name__)


def image_spec_from_openclip(cfg: dict[str, Any]) -> ImageSpec:
    """open_clip's `PreprocessCfg` (as a dict) → the manifest's image spec."""
    size = cfg["size"]
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"non-square image size {size} is not supported")
        size = size[0]
    resize = cfg.get("resize_mode") or "shortest"
    if resize not in ("shortest", "squash"):
        raise ValueError(f"open_clip resize_mode {resize!r} is not supported")
    interpolation = cfg.get("interpolation") or "bicubic"
    return ImageSpec(
        size=int(size),
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        resize=resize,
        interpolation="bilinear" if interpolation == "bilinear" else "bicubic",
        crop_offset="round",
        rgb="after-crop",
    )


def import_openclip(
    repo: Repository,
    arch: str,
    name: str,
    pretrained: str | None = None,
    quantize: Quantize | None = None,
) -> tuple[int, Path]:
    """Builds `arch` and commits it as the next version of `name`.

    `arch` is a name open_clip knows or an architecture .json file; weights are random unless
    `pretrained` names a local checkpoint or a pretrained tag. Both towers are exported and
    checked for parity on real photos and texts; with `quantize`, written as int8 graphs
    (gated at the random-weights gate unless `pretrained` is given).

    Raises ParityError (writing nothing) if the export does not reproduce open_clip.
    """
    import open_clip

    if arch.endswith(".json"):  # an architecture given as a config file, named by its stem
        open_clip.add_model_config(arch)
        arch = Path(arch).stem
    config = open_clip.get_model_config(arch)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    spec = image_spec_from_openclip(open_clip.get_model_preprocess_cfg(model))
    with torch.no_grad():
        dim = int(model.encode_image(torch.zeros(1, 3, spec.size, spec.size)).shape[-1])
    text = TextSpec(
        context_length=int(tokenizer.context_length or model.context_length),
        sot_id=tokenizer.sot_token_id,
        eot_id=tokenizer.eot_token_id,
        pad_id=0,
        clean="openclip",
    )

    @torch.no_grad()
    def reference_images(images: Any) -> np.ndarray:
        return model.encode_image(pixels(preprocess, images)).numpy()

    @torch.no_grad()
    def reference_texts(texts: Any) -> np.ndarray:
        return model.encode_text(tokenizer(list(texts))).numpy()

    source = {"type": "openclip", "arch": arch, "pretrained": pretrained}
    manifest = clip_manifest(name, dim, spec, text, model.logit_scale, source)
    return export_version(
        repo,
        manifest,
        image=TowerSource(Encode(model, lambda m, x: m.encode_image(x)), reference_images),
        text=TowerSource(Encode(model, lambda m, x: m.encode_text(x)), reference_texts),
        write_files=lambda staged: _write(staged, tokenizer, text, arch, config, model),
        quantize=quantize,
        random_weights=pretrained is None,
    )


def _write(
    staged: Path, tokenizer: Any, text: TextSpec, arch: str, config: Any, model: torch.nn.Module
) -> None:
    """The tokenizer, and the weights in the training module's checkpoint layout, so that
    `lens train clip --init NAME` can fine-tune this version."""
    tokenizers.from_openclip(tokenizer, staged / text.tokenizer)
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    checkpoint.save(staged / CHECKPOINT, checkpoint.weights("clip", arch, config, weights))
