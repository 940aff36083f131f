"""SimCLR's augmentations, drawn per image but applied to the whole uint8 batch at once.

Chen et al., 2020, appendix A: random resized crop (scale 0.08–1, aspect 3/4–4/3), horizontal
flip, colour jitter (0.8·s brightness, contrast, saturation, 0.2·s hue) with p = 0.8,
grayscale with p = 0.2, Gaussian blur (kernel 10% of the side, σ 0.1–2) with p = 0.5. Every
image gets its own parameters; the crop and flip are one `grid_sample`, the blur one grouped
convolution, so a batch costs a few tensor operations instead of a Python loop over images
(which took as long as the encoder's forward and backward on a CPU). Hue is rotated in YIQ
space, a close, vectorised stand-in for torchvision's HSV shift. Drawn from the global RNG in
the training process, so a resumed run draws the same views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)
PRESETS = ("paper", "digits")


@dataclass(frozen=True)
class AugmentConfig:
    size: int
    min_scale: float = 0.08
    flip: float = 0.5
    jitter_strength: float = 0.5
    jitter: float = 0.8
    grayscale: float = 0.2
    blur: float = 0.5

    @classmethod
    def preset(cls, name: str, size: int) -> AugmentConfig:
        """`paper`: SimCLR's settings for natural images. `digits`: for handwritten digits,
        where flips change the class and colour means nothing (crops of 40-100%, blur)."""
        if name == "paper":
            return cls(size)
        if name == "digits":
            return cls(size, min_scale=0.4, flip=0.0, jitter=0.0, grayscale=0.0, blur=0.5)
        raise ValueError(f"unknown augmentation preset {name!r}: use {' or '.join(PRESETS)}")

    def __post_init__(self) -> None:
        for name in ("flip", "jitter", "grayscale", "blur"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} probability must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")


class SimCLRAugment:
    """uint8 (N, 3, S, S) → float (N, 3, S, S) in [0, 1], one random view per image."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        self.kernel = max(3, int(0.1 * config.size) // 2 * 2 + 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        x = resized_crop(x, c.size, c.min_scale, c.flip)  # (N, 3, S, S)
        if c.jitter > 0:
            x = _where(torch.rand(len(x)) < c.jitter, colour_jitter(x, c.jitter_strength), x)
        if c.grayscale > 0:
            x = _where(torch.rand(len(x)) < c.grayscale, grayscale(x), x)
        if c.blur > 0:
            x = _where(torch.rand(len(x)) < c.blur, gaussian_blur(x, self.kernel), x)
        return x


def _where(chosen: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(chosen.view(-1, 1, 1, 1), changed, x)


def _uniform(n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n)


def resized_crop(x: torch.Tensor, size: int, min_scale: float, flip: float) -> torch.Tensor:
    """A crop of a random area share in [min_scale, 1] and aspect in [3/4, 4/3] per image,
    resized (bilinear) to `size`, mirrored with probability `flip`. (N, 3, H, W) → (N, 3, S, S)."""
    n = len(x)
    area = _uniform(n, min_scale, 1.0)
    ratio = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3)))
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the side
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(n) - 1)  # the crop's centre in [-1, 1] coordinates
    cy = (1 - h) * (2 * torch.rand(n) - 1)
    mirror = torch.where(torch.rand(n) < flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * mirror, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luminance in all three channels. (N, 3, H, W) → (N, 3, H, W)."""
    luma = torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * luma).sum(1, keepdim=True).expand_as(x)


def colour_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation scaled by factors in [1 − 0.8s, 1 + 0.8s] and hue
    turned by up to ±0.2s of a circle, per image. (N, 3, H, W) → (N, 3, H, W) in [0, 1]."""
    n, s = len(x), 0.8 * strength

    def factor() -> torch.Tensor:
        return _uniform(n, max(0.0, 1 - s), 1 + s).view(-1, 1, 1, 1)

    x = (x * factor()).clamp(0, 1)  # brightness
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor() + mean).clamp(0, 1)  # contrast
    gray = grayscale(x)
    x = ((x - gray) * factor() + gray).clamp(0, 1)  # saturation
    angle = 2 * math.pi * _uniform(n, -0.2 * strength, 0.2 * strength)
    return rotate_hue(x, angle).clamp(0, 1)


def rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Turns the chroma (I, Q) of YIQ by `angle` (N,) radians, keeping the luma Y."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=x.dtype
    )
    cos, sin = torch.cos(angle), torch.sin(angle)
    turn = torch.zeros(len(x), 3, 3, dtype=x.dtype)
    turn[:, 0, 0] = 1
    turn[:, 1, 1], turn[:, 1, 2], turn[:, 2, 1], turn[:, 2, 2] = cos, -sin, sin, cos
    matrix = torch.linalg.inv(to_yiq) @ turn @ to_yiq  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", matrix, x)


def gaussian_blur(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """A separable Gaussian of σ drawn in [0.1, 2] per image, reflected at the borders.
    (N, C, H, W) → (N, C, H, W)."""
    n, c, h, w = x.shape
    sigma = _uniform(n, 0.1, 2.0).view(-1, 1)
    offsets = torch.arange(kernel, dtype=x.dtype) - kernel // 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (N·C, k)
    pad = kernel // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, weights.view(n * c, 1, kernel, 1), groups=n * c)
    y = F.conv2d(y, weights.view(n * c, 1, 1, kernel), groups=n * c)
    return y.view(n, c, h, w)
