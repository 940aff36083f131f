"""SimCLR's augmentations, per image, on uint8 batches.

Chen et al., 2020, appendix A: random resized crop (scale 0.08–1), horizontal flip, colour
jitter (0.8·s brightness, contrast, saturation, 0.2·s hue) with p = 0.8, grayscale with
p = 0.2, Gaussian blur (kernel 10% of the side) with p = 0.5. Run in the training process on
the global RNG, so a resumed run draws the same views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2


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
        raise ValueError(f"unknown augmentation preset {name!r}: use paper or digits")

    def __post_init__(self) -> None:
        for name in ("flip", "jitter", "grayscale", "blur"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} probability must be in [0, 1], got {getattr(self, name)}")


class SimCLRAugment:
    """uint8 (N, 3, S, S) → float (N, 3, S, S) in [0, 1], one random view per image."""

    def __init__(self, config: AugmentConfig) -> None:
        s = config.jitter_strength
        kernel = max(3, int(0.1 * config.size) // 2 * 2 + 1)
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(config.size, scale=(config.min_scale, 1.0), antialias=True),
                v2.RandomHorizontalFlip(config.flip),
                v2.RandomApply(
                    [v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=config.jitter
                ),
                v2.RandomGrayscale(config.grayscale),
                v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=config.blur),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])
