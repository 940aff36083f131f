"""The manifest of a model version: the one definition of the repository format.

A version folder `<repo>/<model>/<version>/` holds `manifest.json`, `image.onnx` and/or
`text.onnx`, and the tokenizer the text tower needs. The manifest says everything the server
needs to serve the version without any Python model code: which towers exist, how images are
preprocessed and texts tokenized, the embedding size, and the sha256 of every file. It is the
only place preprocessing is defined; the server and the exporters' parity checks both read it.
See models/README.md for the format, field by field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lens_server.errors import FailedPrecondition

FORMAT = 1
MANIFEST = "manifest.json"

RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
CROP_OFFSETS = ("round", "floor")
RGB_ORDERS = ("after-crop", "before-resize")
TEXT_CLEANERS = ("openclip", "none")
KINDS = ("clip", "simclr", "mae", "moco", "byol", "barlow", "vicreg", "image", "text")


@dataclass(frozen=True)
class ImageSpec:
    """How the image tower's input is made from a decoded image.

    Resize (`shortest`: the short side to `size`, keeping the aspect ratio, then a centre
    crop of `size`×`size`; `squash`: straight to `size`×`size`), with `interpolation`; the
    crop's offset rounds (`round`, torchvision) or floors (`floor`, transformers) half
    pixels; conversion to RGB happens after the crop (`after-crop`, open_clip) or before the
    resize (`before-resize`, transformers); then x/255, minus `mean`, over `std`.
    Input: float32 (N, 3, size, size). Output: float32 (N, dim).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "shortest"
    interpolation: str = "bicubic"
    crop_offset: str = "round"
    rgb: str = "after-crop"
    file: str = "image.onnx"
    # The same tower as an fp16 `torch.export` program, for GPUs; "" when there is none.
    program: str = ""

    def __post_init__(self) -> None:
        _check_choice("image.resize", self.resize, RESIZE_MODES)
        _check_choice("image.interpolation", self.interpolation, INTERPOLATIONS)
        _check_choice("image.crop_offset", self.crop_offset, CROP_OFFSETS)
        _check_choice("image.rgb", self.rgb, RGB_ORDERS)
        if self.size < 1:
            raise ValueError(f"image.size must be >= 1, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"image.mean and image.std need 3 values, std > 0: {self}")


@dataclass(frozen=True)
class TextSpec:
    """How the text tower's input is made from a string.

    The text is cleaned (`openclip`: ftfy, HTML unescaping, whitespace folding, lower case;
    `none`: the tokenizer's own normaliser only), split into BPE ids by `tokenizer` (a
    `tokenizers` JSON file) without special tokens, wrapped in `sot_id` … `eot_id`, truncated
    to `context_length` (the last kept id becomes `eot_id`) and padded with `pad_id`.
    Input: int64 (N, context_length). Output: float32 (N, dim).
    """

    context_length: int
    sot_id: int
    eot_id: int
    pad_id: int = 0
    clean: str = "openclip"
    tokenizer: str = "tokenizer.json"
    file: str = "text.onnx"
    # The same tower as an fp16 `torch.export` program, for GPUs; "" when there is none.
    program: str = ""

    def __post_init__(self) -> None:
        _check_choice("text.clean", self.clean, TEXT_CLEANERS)
        if self.context_length < 2:
            raise ValueError(f"text.context_length must be >= 2, got {self.context_length}")


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    kind: str
    dim: int
    image: ImageSpec | None = None
    text: TextSpec | None = None
    # Multiplies cosine similarities into logits (CLIP's learned temperature); None: no text
    # tower, or not learned.
    logit_scale: float | None = None
    opset: int = 18
    # sha256 of every file of the version but the manifest.
    files: dict[str, str] = field(default_factory=dict)
    # Lowest cosine similarity between the exported towers and their source, per tower ("image",
    # "text"; "image.program" and "text.program" for the fp16 programs), and what it was
    # measured on.
    parity: dict[str, Any] = field(default_factory=dict)
    # How the towers were quantized ({} for fp32): scheme, calibration set, nodes kept fp32,
    # the parity gate; an int8 version's parity is its cosine to the fp32 towers.
    quantization: dict[str, Any] = field(default_factory=dict)
    # Where the weights came from: {"type": "openclip", "arch": ..., "pretrained": ...}.
    source: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    # Anything else a producer records (training config, evaluation metrics, dataset).
    extra: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        if self.image is None and self.text is None:
            raise ValueError("a model version needs an image tower, a text tower or both")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.format != FORMAT:
            raise ValueError(f"manifest format {self.format} is not supported (this is {FORMAT})")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, spec in (("image", self.image), ("text", self.text)) if spec)

    def describe(self) -> str:
        """One line on where the version comes from, so a user knows whether its weights mean
        anything: its source, its weights (or training data and metrics), dim and parity."""
        source = self.source
        kind = source.get("type")
        if kind == "train":
            data = self.extra.get("dataset", {}).get("source")
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in self.extra.get("metrics", {}).items())
            origin = f"{self.kind} trained on {data}" + (f" ({metrics})" if metrics else "")
        else:
            weights = source.get("pretrained") or (
                "RANDOM weights (no --pretrained)"
                if kind == "openclip"
                else "weights from the folder"
            )
            origin = f"{kind}:{source.get('arch')}, {weights}"
        parity = ", ".join(f"{t} parity {p['min_cosine']:.6f}" for t, p in self.parity.items())
        if scheme := self.quantization.get("scheme"):
            origin += f", {scheme} (gate {self.quantization.get('gate')})"
        return f"{origin}, dim {self.dim}" + (f", {parity}" if parity else "")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        raw = dict(raw)
        image, text = raw.pop("image", None), raw.pop("text", None)
        return cls(
            image=_image_spec_from_dict(image) if image else None,
            text=TextSpec(**text) if text else None,
            **raw,
        )

    def save(self, folder: Path) -> None:
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(folder / MANIFEST)


def _image_spec_from_dict(raw: dict[str, Any]) -> ImageSpec:
    """The image spec as `manifest.json` holds it (lists where the dataclass has tuples)."""
    return ImageSpec(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})


def load(folder: Path) -> Manifest:
    """Reads `folder/manifest.json`; a missing or malformed manifest is a FailedPrecondition."""
    path = folder / MANIFEST
    try:
        raw = json.loads(path.read_text())
        return Manifest.from_dict(raw)
    except FileNotFoundError:
        raise FailedPrecondition(f"{folder}: no {MANIFEST}") from None
    except (ValueError, TypeError, KeyError) as e:
        raise FailedPrecondition(f"{path}: invalid manifest: {e}") from None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Checks every file the manifest lists against its sha256; raises on the first mismatch."""
    specs = [s for s in (manifest.image, manifest.text) if s]
    needed = {s.file for s in specs} | {s.program for s in specs if s.program}
    if manifest.text:
        needed.add(manifest.text.tokenizer)
    missing = needed - manifest.files.keys()
    if missing:
        raise FailedPrecondition(f"{folder}: manifest has no sha256 for {sorted(missing)}")
    for name, expected in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise FailedPrecondition(f"{folder}: {name} is missing")
        actual = sha256(path)
        if actual != expected:
            raise FailedPrecondition(
                f"{path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…"
            )


def parity_failures(manifest: Manifest) -> list[str]:
    """The ONNX towers whose recorded parity is below the threshold it had to reach, described.

    A program's failed parity does not stop the version: the program is simply not used.
    """
    failures = []
    for tower, figures in sorted(manifest.parity.items()):
        if "." in tower:
            continue
        cosine, threshold = figures.get("min_cosine"), figures.get("threshold")
        if cosine is not None and threshold is not None and cosine < threshold:
            failures.append(f"{tower} min cosine {cosine:.6f} < {threshold}")
    return failures


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
