"""Calibration sets: the inputs an int8 export measures its activation ranges on.

Three sources, one shape (encoded images and texts, what a client sends, so calibration runs
through lens's own preprocessing and tokenizer like parity does):
- `samples`: scikit-image's photos (all those it ships, not only the parity photos) and the
  sample texts with a few captions;
- a folder (`--calibration DIR`): its images (any format Pillow reads) and the lines of its
  `.txt` files;
- a trained run's own training data (`lens export --quantize int8`), its captions or class
  prompts as texts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from lens_training.export.parity import SAMPLE_TEXTS

# scikit-image's photos that ship with it (no download), colour and grayscale.
CALIBRATION_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "horse",
    "logo",
    "moon",
    "page",
    "rocket",
    "text",
)
CALIBRATION_CAPTIONS = (
    "a photo of a dog",
    "a close-up photo of a horse in a field",
    "a black and white photo of a clock",
    "the moon at night",
    "a brick wall",
    "a page of printed text",
    "a diagram",
    "two cats sleeping on a sofa",
)
TRAINING_IMAGES = 64


class CalibrationError(ValueError):
    """A calibration set that cannot be used; the message names it and why."""


@dataclass(frozen=True)
class CalibrationSet:
    """`name` says where the inputs came from (recorded in the manifest)."""

    name: str
    images: tuple[bytes, ...] = ()
    texts: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"set": self.name, "images": len(self.images), "texts": len(self.texts)}

    def need(self, modality: str) -> Sequence[Any]:
        """The inputs for one tower; CalibrationError if the set has none."""
        inputs = self.images if modality == "image" else self.texts
        if not inputs:
            kind = "images" if modality == "image" else "texts (lines of .txt files)"
            raise CalibrationError(
                f"calibration set {self.name!r} has no {kind} for the {modality} tower"
            )
        return inputs


def samples() -> CalibrationSet:
    """scikit-image's photos, each whole and as its two halves, and the sample texts."""
    from skimage import data

    images = []
    for name in CALIBRATION_PHOTOS:
        image = Image.fromarray(getattr(data, name)())
        width, height = image.size
        for box in (
            (0, 0, width, height),
            (0, 0, width // 2, height),
            (width // 2, 0, width, height),
        ):
            images.append(_png(image.crop(box)))
    return CalibrationSet("samples", tuple(images), (*SAMPLE_TEXTS, *CALIBRATION_CAPTIONS))


def folder(path: Path) -> CalibrationSet:
    """A folder's images and the non-empty lines of its `.txt` files; CalibrationError naming
    the path for anything else: not a folder, empty, or a file that is neither."""
    if not path.is_dir():
        raise CalibrationError(f"calibration set {str(path)!r} is not a folder")
    images: list[bytes] = []
    texts: list[str] = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.suffix.lower() == ".txt":
            texts += [line.strip() for line in file.read_text().splitlines() if line.strip()]
            continue
        data = file.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise CalibrationError(
                f"calibration set {str(path)!r}: {file.name} is neither an image nor a .txt "
                f"file of texts ({type(e).__name__})"
            ) from None
        images.append(data)
    if not images and not texts:
        raise CalibrationError(f"calibration set {str(path)!r} is empty: no images or .txt texts")
    return CalibrationSet(str(path), tuple(images), tuple(texts))


def training_data(
    source: str, pixels: Any, captions: Sequence[str] | None, classes: Sequence[str]
) -> CalibrationSet:
    """TRAINING_IMAGES of a run's training images ((N, 3, S, S) uint8), evenly spaced, with
    its captions, or prompts of its classes, as texts."""
    step = max(1, len(pixels) // TRAINING_IMAGES)
    chosen = pixels[::step][:TRAINING_IMAGES]
    images = tuple(_png(Image.fromarray(a.permute(1, 2, 0).numpy())) for a in chosen)
    if captions:
        texts = tuple(captions[::step][:TRAINING_IMAGES])
    else:
        texts = tuple(f"a photo of {c}" for c in classes) + SAMPLE_TEXTS
    return CalibrationSet(f"training data: {source}", images, texts)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
