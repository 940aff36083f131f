"""Writing a staged version's towers and checking them against their source, one way for all
exporters: lens's own preprocessing and ONNX Runtime on one side, the source model on the other.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from server.config import RuntimeConfig
from server.preprocess import ImagePreprocessor, TextTokenizer
from server.repository import Manifest, Repository
from server.repository.manifest import ImageSpec, TextSpec
from server.runtime import OnnxTower
from training.export import onnx, parity

CPU = RuntimeConfig(providers=("CPUExecutionProvider",))


class Encode(torch.nn.Module):
    """`fn(module, x)` as a module, so one tower of a two-tower model exports alone."""

    def __init__(self, model: torch.nn.Module, fn: Callable[[Any, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, x)


def export_image(
    staged: Path,
    spec: ImageSpec,
    module: torch.nn.Module,
    dim: int,
    reference: Callable[[Sequence[bytes]], np.ndarray],
) -> dict[str, Any]:
    """Exports the image tower into `staged`; returns its parity figures (or ParityError)."""
    onnx.export(module, torch.zeros(2, 3, spec.size, spec.size), staged / spec.file)
    preprocess = ImagePreprocessor(spec)
    tower = OnnxTower(staged / spec.file, CPU, dim)

    def candidate(images: Sequence[bytes]) -> np.ndarray:
        return tower(np.stack([preprocess(b) for b in images]))

    return parity.check("image", parity.sample_images(), reference, candidate)


def export_text(
    staged: Path,
    spec: TextSpec,
    module: torch.nn.Module,
    dim: int,
    reference: Callable[[Sequence[str]], np.ndarray],
) -> dict[str, Any]:
    """Exports the text tower (its tokenizer must already be in `staged`); parity figures."""
    example = torch.full((2, spec.context_length), spec.pad_id, dtype=torch.long)
    example[:, 0], example[:, 1] = spec.sot_id, spec.eot_id
    onnx.export(module, example, staged / spec.file)
    tokenize = TextTokenizer(spec, staged / spec.tokenizer)
    tower = OnnxTower(staged / spec.file, CPU, dim)
    return parity.check(
        "text", parity.SAMPLE_TEXTS, reference, lambda texts: tower(tokenize(list(texts)))
    )


def pixels(preprocess: Callable[[Any], torch.Tensor], images: Sequence[bytes]) -> torch.Tensor:
    """Encoded images through a source framework's own preprocessing, stacked."""
    return torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images])


@dataclass(frozen=True)
class TowerSource:
    """One tower to export: the module (a batch in, (N, dim) out) and the source framework's
    own pipeline on raw inputs (encoded images or texts), the reference for parity."""

    module: torch.nn.Module
    reference: Callable[[Sequence[Any]], np.ndarray]


def export_version(
    repo: Repository,
    manifest: Manifest,
    image: TowerSource | None = None,
    text: TowerSource | None = None,
    write_files: Callable[[Path], None] | None = None,
) -> tuple[int, Path]:
    """Exports the towers `manifest` declares into a staged version, checks each against its
    source, records the parity figures, and commits the next version of `manifest.name`.

    `write_files(staged)` adds what the towers need first (the tokenizer). A ParityError (or
    any other) leaves nothing in the repository.
    """
    with repo.stage(manifest.name) as staged:
        if write_files:
            write_files(staged)
        parity = {}
        if manifest.image:
            assert image is not None, "the manifest declares an image tower"
            parity["image"] = export_image(
                staged, manifest.image, image.module, manifest.dim, image.reference
            )
        if manifest.text:
            assert text is not None, "the manifest declares a text tower"
            parity["text"] = export_text(
                staged, manifest.text, text.module, manifest.dim, text.reference
            )
        return repo.commit(staged, replace(manifest, parity=parity))
