"""Batched JPEG decoding and preprocessing on a torch device (nvJPEG on a GPU), Pillow as fallback.

`DevicePreprocessor.admit` runs per input on a CPU worker: it checks the header as
`ImagePreprocessor` does and lets through the JPEGs the device can decode (baseline or
progressive, 8-bit, RGB or grey, no EXIF rotation); anything else is preprocessed there and
then with Pillow. `DevicePreprocessor.__call__` decodes a batch with one
`torchvision.io.decode_jpeg` call and resizes, crops and normalises it on the device, images of
the same size together.

Resizing follows Pillow rather than torch's defaults, to give the pixels `ImagePreprocessor`
gives: Pillow resizes a uint8 image with one pass per axis (vertical first where the height
shrinks by more than twice as many pixels as the width, horizontal first otherwise) of the same
antialiased kernels as `interpolate(antialias=True)`, rounding half up to uint8 after each pass,
so the device runs the two passes in that order and rounds after each; Pillow's nearest neighbour
samples pixel centres with its own index arithmetic, so the device gathers those indices.

Measured on the CPU device against `ImagePreprocessor` (x/255 before mean/std, skimage photos
as JPEG quality 90 at 640×480, 300×500, 224×224 and 50×40, to 224 with shortest+round,
shortest+floor and squash; tests/server/test_preprocess_device.py):
- decoding: identical (both libjpeg-turbo with its defaults);
- bicubic, two passes rounded: max |diff| 1/255, mean 6e-7 (Pillow's fixed-point weights);
  one float pass rounded once: max 12/255, mean 4.7e-4; one float pass unrounded: max 20/255,
  mean 8.6e-4 — Pillow's rounding and clamping between the passes is what matters;
- bilinear, two passes rounded: max 1/255, mean 1.4e-5 (one pass rounded: max 1/255, mean
  4.3e-4; unrounded: max 1/255, mean 8.1e-4);
- nearest (Pillow's indices): identical; `interpolate(mode="nearest-exact")` differs by up to
  160/255 on whole rows where float32 index arithmetic lands on the other side of a pixel edge.
The pass order is Pillow 13's (older Pillow always ran the horizontal pass first); the tests
compare against the Pillow installed, so a change there shows. On a CUDA device nvJPEG decodes,
whose IDCT and chroma upsampling differ from libjpeg-turbo's. On the CPU device this path is
slower than Pillow on a thread pool (torch's float antialiased resize; bench/decode.py): it is
for GPUs, and for testing on machines without one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image
from torchvision.io import ImageReadMode, decode_jpeg

from lens_server.config import Limits
from lens_server.errors import InvalidInput
from lens_server.preprocess.image import ImagePreprocessor, crop_offsets, resized_size
from lens_server.repository.manifest import ImageSpec

log = logging.getLogger(__name__)

DEVICE_INTERPOLATIONS = frozenset({"bicubic", "bilinear", "nearest"})
# JPEG frame markers the device decodes: SOF0 (baseline) and SOF2 (progressive), Huffman coded.
_DEVICE_FRAMES = frozenset({0xC0, 0xC2})
# Every other SOFn: extended sequential, lossless, hierarchical, arithmetic coded.
_OTHER_FRAMES = frozenset({0xC1, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field: TEM, RST0-7, SOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
# Orientations `ImageOps.exif_transpose` acts on; any other value leaves the image as it is.
_ROTATED = frozenset(range(2, 9))
# The end-of-image marker: a whole JPEG ends with it (zero padding after it aside).
_EOI = b"\xff\xd9"


def device_decodable(spec: ImageSpec) -> bool:
    """Whether this spec can be preprocessed on a torch device (interpolation bicubic/bilinear/
    nearest; not lanczos)."""
    return spec.interpolation in DEVICE_INTERPOLATIONS


class DevicePreprocessor:
    """Encoded images → float32 (N, 3, size, size) on `device`, as `ImagePreprocessor` makes them.

    `cpu` is the Pillow preprocessor of the same spec and limits: it checks every input and
    preprocesses those the device cannot take.
    """

    def __init__(
        self, spec: ImageSpec, limits: Limits, device: str | torch.device, cpu: ImagePreprocessor
    ) -> None:
        if not device_decodable(spec):
            raise ValueError(
                f"interpolation {spec.interpolation!r} cannot run on a device: "
                f"only {', '.join(sorted(DEVICE_INTERPOLATIONS))}"
            )
        if cpu.spec != spec or cpu.limits != limits:
            raise ValueError(f"the CPU preprocessor has {cpu.spec}, {cpu.limits}: not {spec}")
        self.spec, self.limits, self.cpu = spec, limits, cpu
        self.device = torch.device(device)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=self.device)

    def admit(self, data: bytes) -> bytes | np.ndarray:
        """Checks one input by its header; runs on a CPU worker thread.

        Returns `data` where the device can decode it: a baseline or progressive 8-bit JPEG
        (or MPO), RGB or grey, without EXIF rotation. Otherwise returns `cpu(data)`, float32
        (3, size, size). InvalidInput as `ImagePreprocessor` raises it.
        """
        image = self.cpu.open(data)
        if self._device_takes(image, data):
            return data
        return self.cpu.from_pil(self.cpu.load(image))

    def _device_takes(self, image: Image.Image, data: bytes) -> bool:
        if image.format not in ("JPEG", "MPO") or image.mode not in ("RGB", "L"):
            return False
        if jpeg_frame(data) not in _DEVICE_FRAMES:
            return False
        try:
            orientation = image.getexif().get(ExifTags.Base.Orientation)
        except (OSError, SyntaxError, ValueError):  # Pillow says what is wrong when it loads
            return False
        return orientation not in _ROTATED

    def __call__(
        self, items: Sequence[bytes | np.ndarray]
    ) -> tuple[torch.Tensor, dict[int, InvalidInput]]:
        """A batch of admitted items → pixels, and the rows that could not be decoded.

        Shape: items of `admit` (N) → float32 (N, 3, size, size) on the device, normalised;
        the rows in the error dict (each an InvalidInput saying why) are zeros.
        """
        size = self.spec.size
        out = torch.zeros((len(items), 3, size, size), dtype=torch.float32, device=self.device)
        jpegs = {i: item for i, item in enumerate(items) if isinstance(item, bytes)}
        decoded, fallbacks, errors = self._decode(jpegs)
        rows = {i: item for i, item in enumerate(items) if not isinstance(item, bytes)}
        rows.update(fallbacks)
        if rows:
            index = torch.tensor(list(rows), device=self.device)
            pixels = torch.from_numpy(np.stack(list(rows.values())))  # (R, 3, size, size)
            out[index] = pixels.to(self.device, torch.float32)
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, image in decoded.items():
            by_shape[tuple(image.shape)].append(i)
        for group in by_shape.values():
            images = torch.stack([decoded[i] for i in group])  # (G, 3, H, W) uint8
            out[torch.tensor(group, device=self.device)] = self._preprocess(images)
        return out, errors

    def _decode(
        self, jpegs: dict[int, bytes]
    ) -> tuple[dict[int, torch.Tensor], dict[int, np.ndarray], dict[int, InvalidInput]]:
        """JPEGs by row → uint8 (3, H, W) on the device, Pillow's pixels for those the device
        could not decode, and errors for those Pillow could not decode either."""
        decoded: dict[int, torch.Tensor] = {}
        fallbacks: dict[int, np.ndarray] = {}
        errors: dict[int, InvalidInput] = {}

        def pillow(i: int) -> None:
            try:
                fallbacks[i] = self.cpu(jpegs[i])
            except InvalidInput as e:
                errors[i] = e

        # nvJPEG decodes a truncated scan without complaint (grey where the data is missing);
        # Pillow refuses it. A JPEG that does not end whole is Pillow's to judge.
        encoded = {
            i: torch.frombuffer(bytearray(data), dtype=torch.uint8)
            for i, data in jpegs.items()
            if data.rstrip(b"\x00").endswith(_EOI)
        }
        for i in jpegs.keys() - encoded.keys():
            pillow(i)
        if not encoded:
            return decoded, fallbacks, errors
        try:
            images = decode_jpeg(list(encoded.values()), device=self.device, mode=ImageReadMode.RGB)
            return dict(zip(encoded, images, strict=True)), fallbacks, errors
        except RuntimeError as e:
            log.debug("batched decode of %d JPEGs failed (%s); one by one now", len(encoded), e)
        for i, tensor in encoded.items():
            try:
                decoded[i] = decode_jpeg(tensor, device=self.device, mode=ImageReadMode.RGB)
            except RuntimeError as e:
                log.debug("row %d: the device could not decode it (%s); trying Pillow", i, e)
                pillow(i)
        return decoded, fallbacks, errors

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (G, 3, H, W) → float32 (G, 3, size, size): resize, crop, x/255, mean/std."""
        height, width = images.shape[-2:]
        new_w, new_h = resized_size(self.spec, width, height)
        pixels = images.to(torch.float32)
        if self.spec.interpolation == "nearest":
            rows = torch.tensor(_nearest(height, new_h), device=self.device)
            columns = torch.tensor(_nearest(width, new_w), device=self.device)
            pixels = pixels.index_select(-2, rows).index_select(-1, columns)
        else:
            pixels = self._resize(pixels, new_w, new_h)
        if self.spec.resize == "shortest":
            size = self.spec.size
            left, top = crop_offsets(self.spec, new_w, new_h)
            pixels = pixels[..., top : top + size, left : left + size]
        pixels = pixels / 255
        return (pixels - self._mean[:, None, None]) / self._std[:, None, None]

    def _resize(self, pixels: torch.Tensor, new_w: int, new_h: int) -> torch.Tensor:
        """float32 (G, 3, H, W) of uint8 values → (G, 3, new_h, new_w), as Pillow resizes: one
        pass per axis, each rounded half up and clamped to uint8, in Pillow's order."""
        height, width = pixels.shape[-2:]
        # Pillow (Resample.c) runs the vertical pass first where the height shrinks by more
        # than twice as many pixels as the width does, the horizontal pass first otherwise.
        vertical_first = height - new_h > 0 and height - new_h > (width - new_w) * 2
        sizes = (
            [(new_h, width), (new_h, new_w)]
            if vertical_first
            else [(height, new_w), (new_h, new_w)]
        )
        for size in sizes:
            if size != tuple(pixels.shape[-2:]):
                pixels = F.interpolate(
                    pixels,
                    size=size,
                    mode=self.spec.interpolation,
                    antialias=True,
                    align_corners=False,
                )
                pixels = torch.floor(pixels + 0.5).clamp_(0, 255)
        return pixels


def _nearest(size_in: int, size_out: int) -> list[int]:
    """The source pixel of each of `size_out` pixels, as Pillow's nearest resize picks it: the
    centre of each output pixel mapped back, accumulated in double precision, truncated."""
    scale, position, indices = size_in / size_out, size_in / size_out * 0.5, []
    for _ in range(size_out):
        indices.append(min(int(position), size_in - 1))
        position += scale
    return indices


def jpeg_frame(data: bytes) -> int | None:
    """The SOFn marker (0xC0 baseline, 0xC2 progressive, ...) of a JPEG's first frame, if it is
    8-bit; None where the header ends or breaks before one, or the frame has other precision."""
    at = 2  # after SOI
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker in _STANDALONE:
            at += 2
        elif marker in _DEVICE_FRAMES or marker in _OTHER_FRAMES:
            precision = data[at + 4] if at + 4 < len(data) else None
            return marker if precision == 8 else None
        elif marker in (0xDA, 0xD9):  # start of scan, end of image: no frame header
            return None
        else:
            at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None
