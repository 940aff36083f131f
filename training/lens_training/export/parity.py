"""Parity between an exported version and the model it came from, on real inputs.

The reference embeds with the source framework's own pipeline (its preprocessing, its
tokenizer, its PyTorch model); the candidate embeds with lens's preprocessing and ONNX Runtime,
exactly as the server will. Every vector must agree to a cosine similarity threshold.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from PIL import Image

from lens_server.vectors import cosine_rows

# Real photos shipped with scikit-image: colour, grayscale (camera, coins), RGBA (logo) and
# odd aspect ratios (rocket, page), so conversion and crop paths are all exercised.
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "logo", "page")
SAMPLE_TEXTS = (
    "a photo of a cat.",
    "An astronaut in a white space suit, holding a helmet.",
    "a cup of coffee on a saucer",
    "A ROCKET ON ITS LAUNCH PAD!!!",
    "naïve café — crème brûlée &amp; 日本語のテキスト 🚀",
    "  lots   of\twhitespace \n and newlines  ",
    "1234 5678 3.14159",
    "a very long caption " * 40,
    "",
)
FP32_THRESHOLD = 0.99999
# fp16 weights and activations: what the GPU runtime must keep.
FP16_THRESHOLD = 0.999

T = TypeVar("T")


class ParityError(Exception):
    """An export does not reproduce its source model closely enough; nothing was written."""


def sample_images() -> list[bytes]:
    """The sample photos as PNG files (what a client would send)."""
    from skimage import data  # a training-side dependency

    images = []
    for name in SAMPLE_PHOTOS:
        array = getattr(data, name)()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def check(
    tower: str,
    inputs: Sequence[T],
    reference: Callable[[Sequence[T]], np.ndarray],
    candidate: Callable[[Sequence[T]], np.ndarray],
    threshold: float | None = None,
) -> dict[str, float | int]:
    """Embeds `inputs` both ways; the figures for the manifest, or ParityError.

    `threshold`: the lowest cosine similarity accepted (default `FP32_THRESHOLD`).
    """
    threshold = FP32_THRESHOLD if threshold is None else threshold
    cosines = cosine_rows(
        np.asarray(reference(inputs), np.float64), np.asarray(candidate(inputs), np.float64)
    )
    worst = int(np.argmin(cosines))
    figures = {"min_cosine": float(cosines[worst]), "inputs": len(inputs), "threshold": threshold}
    if cosines[worst] < threshold:
        raise ParityError(
            f"{tower} tower: cosine similarity {cosines[worst]:.7f} on sample {worst} is below "
            f"{threshold} (mean {cosines.mean():.7f}); the export does not match its source"
        )
    return figures
