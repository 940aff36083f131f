"""Writing a staged version's towers and checking them against their source, one way for all
exporters: lens's own preprocessing and ONNX Runtime on one side, the source model on the other.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from PIL import Image

from lens_server.config import RuntimeConfig
from lens_server.preprocess import ImagePreprocessor, TextTokenizer
from lens_server.repository import Manifest, Repository
from lens_server.repository.manifest import ImageSpec, TextSpec
from lens_server.runtime import OnnxTower, Tower
from lens_server.runtime.program import ProgramTower
from lens_training.export import calibration, onnx, parity, program
from lens_training.export.quantize import Quantize, check_int8, int8_file, quantize_tower

log = logging.getLogger(__name__)

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
    quantize: Quantize | None = None,
) -> tuple[ImageSpec, dict[str, Any]]:
    """Exports the image tower into `staged`: the ONNX graph, then the fp16 program, or with
    `quantize` the int8 graph in place of both. Returns the spec (naming the program if it
    passed parity, or the int8 graph) and the parity figures (or ParityError for the ONNX
    graph)."""
    preprocess = ImagePreprocessor(spec)

    def prepare(images: Sequence[bytes]) -> np.ndarray:
        return np.stack([preprocess(b) for b in images])

    example = torch.zeros(2, 3, spec.size, spec.size)
    samples = parity.sample_images()
    tower = _Tower("image", spec, module, example, dim, samples, reference, prepare, quantize)
    return tower.export(staged)


def export_text(
    staged: Path,
    spec: TextSpec,
    module: torch.nn.Module,
    dim: int,
    reference: Callable[[Sequence[str]], np.ndarray],
    quantize: Quantize | None = None,
) -> tuple[TextSpec, dict[str, Any]]:
    """Exports the text tower (its tokenizer must already be in `staged`), as `export_image`."""
    tokenize = TextTokenizer(spec, staged / spec.tokenizer)

    def prepare(texts: Sequence[str]) -> np.ndarray:
        return tokenize(list(texts))

    example = torch.full((2, spec.context_length), spec.pad_id, dtype=torch.long)
    example[:, 0], example[:, 1] = spec.sot_id, spec.eot_id
    samples = list(parity.SAMPLE_TEXTS)
    tower = _Tower("text", spec, module, example, dim, samples, reference, prepare, quantize)
    return tower.export(staged)


Spec = TypeVar("Spec", ImageSpec, TextSpec)


@dataclass(frozen=True)
class _Tower(Generic[Spec]):
    """One tower to write: `prepare(samples)` turns raw samples into the tower's input, so
    the graph, the program and the int8 graph are checked on the same inputs as the source."""

    modality: str
    spec: Spec
    module: torch.nn.Module
    example: torch.Tensor
    dim: int
    samples: list[Any]
    reference: Callable[[Sequence[Any]], np.ndarray]
    prepare: Callable[[Sequence[Any]], np.ndarray]
    quantize: Quantize | None = None

    def embed(self, tower: Tower) -> Callable[[Sequence[Any]], np.ndarray]:
        return lambda samples: tower(self.prepare(samples))

    def export(self, staged: Path) -> tuple[Spec, dict[str, Any]]:
        name, spec = self.modality, self.spec
        onnx.export(self.module, self.example, staged / spec.file)
        graph = self.embed(OnnxTower(staged / spec.file, CPU, self.dim))
        figures = {name: parity.check(name, self.samples, self.reference, graph)}
        if self.quantize is not None:
            return self._int8(staged, graph, figures)
        program = _export_program(staged, name, self.module, self.example, self.dim)
        if program is not None:
            file, tower = program
            if checked := _check_program(name, self.samples, self.reference, self.embed(tower)):
                figures[f"{name}.program"] = checked
                spec = replace(spec, program=file)
            else:
                (staged / file).unlink()
        return spec, figures

    def _int8(
        self, staged: Path, fp32: Callable[[Sequence[Any]], np.ndarray], figures: dict[str, Any]
    ) -> tuple[Spec, dict[str, Any]]:
        """The int8 graph in place of the fp32 one (which passed parity to the source): its
        parity to the fp32 graph is the tower's, the fp32 figures are kept as `<tower>.fp32`.
        No fp16 program: an int8 version is served by ONNX Runtime."""
        assert self.quantize is not None
        name, fp32_file = self.modality, staged / self.spec.file
        int8_name = int8_file(self.spec.file)
        assert self.quantize.calibration is not None, "export_version sets it"
        inputs = self.prepare(self.quantize.calibration.need(name))
        kept = quantize_tower(fp32_file, staged / int8_name, inputs)
        int8 = self.embed(OnnxTower(staged / int8_name, CPU, self.dim))
        gate = self.quantize.gate_for(random_weights=False)  # export_version set it
        checked = check_int8(name, self.samples, fp32, int8, gate)
        fp32_file.unlink()
        spec = replace(self.spec, file=int8_name, program="")
        return spec, {name: {**checked, "fp32_nodes": kept}, f"{name}.fp32": figures[name]}


def _export_program(
    staged: Path, modality: str, module: torch.nn.Module, example: torch.Tensor, dim: int
) -> tuple[str, Tower] | None:
    """The tower as an fp16 program, opened on the CPU; None (logged) where torch.export
    cannot trace it: the version is then served from ONNX alone."""
    file = f"{modality}.pt2"
    try:
        program.export_fp16(module, example, staged / file)
        return file, ProgramTower(staged / file, dim, "cpu", max_batch=1)
    except Exception as e:  # torch.export raises many types on untraceable code
        log.warning("%s tower: no fp16 program (%s: %s)", modality, type(e).__name__, e)
        (staged / file).unlink(missing_ok=True)
        return None


def _check_program(
    tower: str,
    samples: Sequence[Any],
    reference: Callable[[Sequence[Any]], np.ndarray],
    candidate: Callable[[Sequence[Any]], np.ndarray],
) -> dict[str, Any] | None:
    """Parity figures of a program at the fp16 threshold; None (logged) when it misses it."""
    try:
        return parity.check(tower, samples, reference, candidate, parity.FP16_THRESHOLD)
    except parity.ParityError as e:
        log.warning("fp16 program left out: %s", e)
        return None


def pixels(preprocess: Callable[[Any], torch.Tensor], images: Sequence[bytes]) -> torch.Tensor:
    """Encoded images through a source framework's own preprocessing, stacked."""
    return torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images])


@dataclass(frozen=True)
class TowerSource:
    """One tower to export: the module (a batch in, (N, dim) out) and the source framework's
    own pipeline on raw inputs (encoded images or texts), the reference for parity."""

    module: torch.nn.Module
    reference: Callable[[Sequence[Any]], np.ndarray]


def clip_manifest(
    name: str,
    dim: int,
    image: ImageSpec,
    text: TextSpec,
    logit_scale: torch.Tensor,
    source: dict[str, Any],
) -> Manifest:
    """The manifest of an imported two-tower CLIP model, before `export_version` adds its
    files and parity: `logit_scale` is the model's learnt log scale, `source` where it came
    from."""
    return Manifest(
        name=name,
        version=0,
        kind="clip",
        dim=dim,
        image=image,
        text=text,
        logit_scale=float(logit_scale.exp().item()),
        source=source,
    )


def export_version(
    repo: Repository,
    manifest: Manifest,
    image: TowerSource | None = None,
    text: TowerSource | None = None,
    write_files: Callable[[Path], None] | None = None,
    quantize: Quantize | None = None,
    random_weights: bool = False,
) -> tuple[int, Path]:
    """Exports the towers `manifest` declares into a staged version, checks each against its
    source, records the parity figures, and commits the next version of `manifest.name`.

    `write_files(staged)` adds what the towers need first (the tokenizer). With `quantize`
    the towers are int8 graphs (see `export.quantize`), gated by parity to the fp32 graphs at
    the gate for trained or (`random_weights`) random weights. A ParityError (or any other)
    leaves nothing in the repository.
    """
    if quantize is not None:
        quantize = replace(
            quantize,
            calibration=quantize.calibration or calibration.samples(),
            gate=quantize.gate_for(random_weights),
        )
    with repo.stage(manifest.name) as staged:
        if write_files:
            write_files(staged)
        parity: dict[str, Any] = {}
        if manifest.image:
            assert image is not None, "the manifest declares an image tower"
            image_spec, figures = export_image(
                staged, manifest.image, image.module, manifest.dim, image.reference, quantize
            )
            manifest = replace(manifest, image=image_spec)
            parity.update(figures)
        if manifest.text:
            assert text is not None, "the manifest declares a text tower"
            text_spec, figures = export_text(
                staged, manifest.text, text.module, manifest.dim, text.reference, quantize
            )
            manifest = replace(manifest, text=text_spec)
            parity.update(figures)
        if quantize is not None:
            kept = {t: parity[t].pop("fp32_nodes") for t in manifest.modalities}
            manifest = replace(manifest, quantization=quantize.record(kept))
        return repo.commit(staged, replace(manifest, parity=parity, opset=onnx.OPSET))
