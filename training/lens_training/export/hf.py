"""`lens import hf DIR`: a local transformers `CLIPModel` folder → a two-tower version.

Images are preprocessed as transformers' `CLIPImageProcessor` (Pillow backend) does: RGB
first, short side resized, floor-rounded centre crop, x/255, normalised. Its settings are read
where transformers reads them: `processor_config.json`'s `image_processor` (what
`CLIPProcessor.save_pretrained` writes since transformers 5), else `preprocessor_config.json`
(what earlier versions, and `CLIPImageProcessor.save_pretrained`, write). Texts use the
folder's own fast tokenizer (its normaliser cleans; its BOS/EOS/pad ids wrap and pad).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens_server.repository import ImageSpec, Repository, TextSpec
from lens_training.encoders import OPENAI_MEAN, OPENAI_STD
from lens_training.export.quantize import Quantize
from lens_training.export.towers import Encode, TowerSource, clip_manifest, export_version

_RESAMPLE = {2: "bilinear", 3: "bicubic", 0: "nearest", 1: "lanczos"}
PROCESSOR = "processor_config.json"  # transformers 5: the image processor nested inside
PREPROCESSOR = "preprocessor_config.json"  # transformers 4, and an image processor alone


def image_processor_config(folder: Path) -> tuple[Path, dict[str, Any]]:
    """(the file, the settings) of the folder's image processor, found as transformers
    finds it: nested in `processor_config.json` if there, else `preprocessor_config.json`."""
    processor = folder / PROCESSOR
    if processor.is_file():
        nested = json.loads(processor.read_text()).get("image_processor")
        if isinstance(nested, dict):
            return processor, nested
    preprocessor = folder / PREPROCESSOR
    if preprocessor.is_file():
        return preprocessor, json.loads(preprocessor.read_text())
    raise ValueError(
        f"{folder} has no image processor settings: neither {PROCESSOR} with an "
        f'"image_processor" nor {PREPROCESSOR}'
    )


def image_spec_from_hf_folder(folder: Path) -> ImageSpec:
    """The folder's `CLIPImageProcessor` settings → the manifest's image spec."""
    path, cfg = image_processor_config(folder)
    size, crop = cfg.get("size", {}), cfg.get("crop_size", {})
    short = size.get("shortest_edge") if isinstance(size, dict) else size
    side = crop.get("height") if isinstance(crop, dict) else crop
    if not short or side is None or (isinstance(crop, dict) and crop.get("width") != side):
        raise ValueError(f"{path}: only shortest-edge resize and square crops are supported")
    if short != side:
        raise ValueError(f"{path}: resize to {short} then crop to {side} is not supported")
    return ImageSpec(
        size=int(side),
        mean=tuple(cfg.get("image_mean", OPENAI_MEAN)),
        std=tuple(cfg.get("image_std", OPENAI_STD)),
        resize="shortest",
        interpolation=_RESAMPLE.get(int(cfg.get("resample", 3)), "bicubic"),
        crop_offset="floor",
        rgb="before-resize",
    )


def _features(output: Any) -> torch.Tensor:
    """transformers 4 returns a tensor, 5 an output object with `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def import_hf(
    repo: Repository, folder: Path, name: str, quantize: Quantize | None = None
) -> tuple[int, Path]:
    """Exports both towers of the `CLIPModel` in `folder` (int8 with `quantize`); ParityError
    writes nothing."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(folder)).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not getattr(hf_tokenizer, "is_fast", False):
        raise ValueError(f"{folder}: a fast tokenizer (tokenizer.json) is needed")
    spec = image_spec_from_hf_folder(folder)
    dim = int(model.config.projection_dim)
    length = int(model.config.text_config.max_position_embeddings)
    text = TextSpec(
        context_length=length,
        sot_id=hf_tokenizer.bos_token_id,
        eot_id=hf_tokenizer.eos_token_id,
        pad_id=hf_tokenizer.pad_token_id
        if hf_tokenizer.pad_token_id is not None
        else hf_tokenizer.eos_token_id,
        clean="none",
    )
    # The exported tokenizer wraps nothing: lens adds BOS/EOS and pads itself.
    backend = hf_tokenizer.backend_tokenizer
    backend.no_padding()
    backend.no_truncation()

    @torch.no_grad()
    def reference_images(images: Any) -> np.ndarray:
        from lens_server.preprocess import ImagePreprocessor

        pre = ImagePreprocessor(spec)
        x = torch.from_numpy(np.stack([pre(b) for b in images]))
        return _features(model.get_image_features(pixel_values=x)).numpy()

    @torch.no_grad()
    def reference_texts(texts: Any) -> np.ndarray:
        ids = hf_tokenizer(
            list(texts),
            padding="max_length",
            max_length=length,
            truncation=True,
            return_tensors="pt",
        )["input_ids"]
        return _features(model.get_text_features(input_ids=ids)).numpy()

    def image_tower(m: Any, x: torch.Tensor) -> torch.Tensor:
        return _features(m.get_image_features(pixel_values=x))

    def text_tower(m: Any, x: torch.Tensor) -> torch.Tensor:
        return _features(m.get_text_features(input_ids=x))

    source = {"type": "hf", "arch": str(folder.resolve())}
    manifest = clip_manifest(name, dim, spec, text, model.logit_scale, source)
    return export_version(
        repo,
        manifest,
        image=TowerSource(Encode(model, image_tower), reference_images),
        text=TowerSource(Encode(model, text_tower), reference_texts),
        write_files=lambda staged: backend.save(str(staged / text.tokenizer)),
        quantize=quantize,
    )
