"""Image decoding and preprocessing with Pillow and numpy (no torch).

Reproduces open_clip's evaluation transform (torchvision `Resize` on the short side,
`CenterCrop`, RGB conversion, `ToTensor`, `Normalize`) operation for operation on the same
Pillow calls, so lens and open_clip produce the same pixels; transformers' `CLIPImageProcessor`
order (RGB first, floor-rounded crop) is available through the manifest.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lens_server.config import Limits
from lens_server.errors import InvalidInput
from lens_server.repository.manifest import ImageSpec

# Formats lens accepts. MPO is the multi-picture JPEG that phone cameras write.
FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF"})

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImagePreprocessor:
    """Encoded image bytes → float32 (3, size, size), as the manifest's `ImageSpec` says."""

    def __init__(self, spec: ImageSpec, limits: Limits | None = None) -> None:
        self.spec = spec
        self.limits = limits or Limits()
        self._mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, data: bytes) -> np.ndarray:
        return self.from_pil(self.decode(data))

    def decode(self, data: bytes) -> Image.Image:
        """Decodes one image, EXIF orientation applied; InvalidInput says why it cannot be."""
        return self.load(self.open(data))

    def open(self, data: bytes) -> Image.Image:
        """Reads and checks the header of one image without decoding its pixels (`load` does).

        InvalidInput says why it is refused: empty, over the byte limit, not an image, a format
        lens does not accept, over the pixel limit.
        """
        if not data:
            raise InvalidInput("image is empty (0 bytes)")
        if len(data) > self.limits.max_image_bytes:
            raise InvalidInput(
                f"image is {len(data)} bytes, over the {self.limits.max_image_bytes} byte limit"
            )
        with _decode_errors():
            image = Image.open(io.BytesIO(data))
            self._check_header(image)
        return image

    def load(self, image: Image.Image) -> Image.Image:
        """Decodes the pixels of an image from `open` and applies its EXIF orientation."""
        with _decode_errors():
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
        return image

    def _check_header(self, image: Image.Image) -> None:
        if image.format not in FORMATS:
            raise InvalidInput(
                f"image format {image.format} is not accepted: JPEG, PNG, WebP, BMP or GIF"
            )
        width, height = image.size
        if width * height > self.limits.max_image_pixels:
            raise InvalidInput(
                f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
                f"{self.limits.max_image_pixels / 1e6:.1f} megapixel limit"
            )

    def from_pil(self, image: Image.Image) -> np.ndarray:
        """A decoded image → float32 (3, size, size), normalised."""
        spec = self.spec
        if spec.rgb == "before-resize":
            image = image.convert("RGB")
        image = self._resize(image)
        if spec.resize == "shortest":
            image = self._center_crop(image)
        image = image.convert("RGB")
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        return (pixels - self._mean) / self._std  # (3, H, W)

    def _resize(self, image: Image.Image) -> Image.Image:
        new_w, new_h = resized_size(self.spec, *image.size)
        if (new_w, new_h) == image.size:
            return image
        return image.resize((new_w, new_h), _RESAMPLE[self.spec.interpolation])

    def _center_crop(self, image: Image.Image) -> Image.Image:
        size = self.spec.size
        left, top = crop_offsets(self.spec, *image.size)
        return image.crop((left, top, left + size, top + size))


def resized_size(spec: ImageSpec, width: int, height: int) -> tuple[int, int]:
    """(width, height) that a `width`×`height` image is resized to, as `spec.resize` says."""
    size = spec.size
    if spec.resize == "squash":
        return size, size
    # The short side to `size`, the long side truncated (torchvision's rule).
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def crop_offsets(spec: ImageSpec, width: int, height: int) -> tuple[int, int]:
    """(left, top) of the centre `spec.size`² crop of a `width`×`height` image; half pixels
    round (`round`, torchvision) or floor (`floor`, transformers) as `spec.crop_offset` says."""
    size = spec.size
    if spec.crop_offset == "round":
        return round((width - size) / 2.0), round((height - size) / 2.0)
    return (width - size) // 2, (height - size) // 2


@contextmanager
def _decode_errors() -> Iterator[None]:
    """Turns what Pillow raises on a bad or oversized image into InvalidInput."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInput(f"image is too large: {e}") from None
    except UnidentifiedImageError:
        raise InvalidInput(
            "image could not be decoded: not a JPEG, PNG, WebP, BMP or GIF file"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidInput(f"image could not be decoded: {e}") from None
