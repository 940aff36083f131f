"""SimCLR's batched augmentations: shapes, value ranges, seeded determinism, and each
operation against what it must leave alone (luma under a hue turn, a flat image under blur)."""

from __future__ import annotations

import math

import pytest
import torch

from lens_training.augment import (
    LUMA,
    AugmentConfig,
    SimCLRAugment,
    colour_jitter,
    gaussian_blur,
    grayscale,
    resized_crop,
    rotate_hue,
)


def images(n: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size) noise."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def luma(x: torch.Tensor) -> torch.Tensor:
    return (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1)


def test_presets_and_their_checks():
    assert AugmentConfig.preset("paper", 32) == AugmentConfig(32)
    digits = AugmentConfig.preset("digits", 32)
    assert (digits.flip, digits.jitter, digits.grayscale, digits.min_scale) == (0, 0, 0, 0.4)
    with pytest.raises(ValueError, match="unknown augmentation preset 'strong'"):
        AugmentConfig.preset("strong", 32)
    with pytest.raises(ValueError, match="blur probability must be in"):
        AugmentConfig(32, blur=1.5)
    with pytest.raises(ValueError, match="min_scale must be in"):
        AugmentConfig(32, min_scale=0.0)


@pytest.mark.parametrize("preset", ["paper", "digits"])
def test_a_view_is_float_in_the_unit_range_at_the_configured_size(preset):
    augment = SimCLRAugment(AugmentConfig.preset(preset, 16))
    torch.manual_seed(0)
    view = augment(images(size=24))  # resized to the configured size on the way
    assert view.shape == (6, 3, 16, 16) and view.dtype == torch.float32
    assert view.min() >= 0 and view.max() <= 1


def test_views_repeat_with_the_seed_and_differ_per_image():
    augment = SimCLRAugment(AugmentConfig(24))
    batch = images(1).expand(4, -1, -1, -1)  # four copies of one image
    torch.manual_seed(7)
    first = augment(batch)
    torch.manual_seed(7)
    assert torch.equal(augment(batch), first)
    torch.manual_seed(8)
    assert not torch.equal(augment(batch), first)
    # every image draws its own crop, colours and blur
    assert all(not torch.allclose(first[0], first[i]) for i in range(1, 4))


def test_the_flip_mirrors_the_same_crop():
    x = images().float() / 255
    torch.manual_seed(3)
    kept = resized_crop(x, 16, 0.3, flip=0.0)
    torch.manual_seed(3)  # the same crops, all mirrored
    mirrored = resized_crop(x, 16, 0.3, flip=1.0)
    assert torch.allclose(mirrored, kept.flip(-1), atol=1e-6)


def test_a_crop_of_a_flat_image_is_flat():
    x = torch.full((3, 3, 20, 20), 0.25)
    torch.manual_seed(0)
    assert torch.allclose(resized_crop(x, 8, 0.08, flip=0.5), torch.full((3, 3, 8, 8), 0.25))


def test_grayscale_is_luma_in_every_channel():
    x = images().float() / 255
    gray = grayscale(x)
    assert gray.shape == x.shape
    assert torch.allclose(gray[:, 0], luma(x)) and torch.equal(gray[:, 0], gray[:, 2])
    assert math.isclose(sum(LUMA), 1.0)
    already = x[:, :1].expand_as(x)  # a gray image is its own grayscale
    assert torch.allclose(grayscale(already), already, atol=1e-6)


def test_turning_the_hue_keeps_luma_and_a_full_turn_is_identity():
    x = images().float() / 255
    angles = torch.tensor([0.0, 0.5, -1.0, 2.0, math.pi, 2 * math.pi])
    turned = rotate_hue(x, angles)
    assert torch.allclose(luma(turned), luma(x), atol=1e-5)
    assert torch.allclose(turned[0], x[0], atol=1e-5) and torch.allclose(turned[5], x[5], atol=1e-5)
    assert not torch.allclose(turned[1], x[1], atol=1e-2)


def test_colour_jitter_of_strength_zero_changes_nothing():
    x = images().float() / 255
    torch.manual_seed(0)
    assert torch.allclose(colour_jitter(x, 0.0), x, atol=1e-5)
    jittered = colour_jitter(x, 1.0)
    assert jittered.shape == x.shape and jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered, x, atol=1e-2)


def test_blur_keeps_flat_images_and_smooths_noise():
    flat = torch.full((2, 3, 12, 12), 0.6)
    torch.manual_seed(0)
    assert torch.allclose(gaussian_blur(flat, 5), flat, atol=1e-6)
    x = images().float() / 255
    blurred = gaussian_blur(x, 5)
    assert blurred.shape == x.shape
    assert (blurred.std(dim=(1, 2, 3)) < x.std(dim=(1, 2, 3))).all()
    assert torch.allclose(blurred.mean(), x.mean(), atol=0.01)  # weights sum to one
