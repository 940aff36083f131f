"""MAE's patches and masking: `patchify` in the ViT's token order, `random_masking` keeping
exactly the ratio, seeded, with `ids_restore` putting the tokens back."""

from __future__ import annotations

import pytest
import torch

from lens_training.heads import patchify
from lens_training.masking import random_masking


def test_patchify_cuts_row_major_patches_with_channels_last():
    """Against the patches cut out one by one: patch i·(W/p) + j is rows i·p.., columns j·p..,
    flattened as (row, column, channel)."""
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 12, 8)  # a 3 × 2 grid of 4-pixel patches
    patches = patchify(pixels, 4)
    assert patches.shape == (2, 6, 4 * 4 * 3)
    for i in range(3):
        for j in range(2):
            cut = pixels[:, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]  # (N, C, p, p)
            assert torch.equal(patches[:, 2 * i + j], cut.permute(0, 2, 3, 1).reshape(2, -1))


def test_patchify_moves_every_pixel_once():
    """A permutation of the pixels: nothing lost or repeated, so it can be undone."""
    pixels = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    patches = patchify(pixels, 2)
    assert torch.equal(patches.flatten().sort().values, pixels.flatten())


def test_patches_are_in_the_order_of_the_vit_tokens():
    """The MAE target lines up with the encoder: the ViT's patch embedding (a strided
    convolution) is a linear map of each patchified row."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 5, kernel_size=4, stride=4, bias=False)
    pixels = torch.randn(2, 3, 16, 16)
    tokens = conv(pixels).flatten(2).transpose(1, 2)  # (N, L, 5), as open_clip's ViT
    weight = conv.weight.permute(0, 2, 3, 1).reshape(5, -1)  # (5, p·p·C), channels last
    with torch.no_grad():
        assert torch.allclose(patchify(pixels, 4) @ weight.T, tokens, atol=1e-5)


@pytest.mark.parametrize(("length", "ratio"), [(64, 0.75), (49, 0.75), (16, 0.5), (10, 0.0)])
def test_masking_keeps_exactly_the_ratio(length, ratio):
    torch.manual_seed(3)
    x = torch.randn(4, length, 8)
    visible, mask, ids_restore = random_masking(x, ratio)
    keep = round(length * (1 - ratio))
    assert visible.shape == (4, keep, 8)
    assert (mask.sum(1) == length - keep).all()
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for n in range(4):  # the visible tokens are exactly the unmasked ones, in shuffled order
        kept = x[n][mask[n] == 0]
        assert sorted(map(tuple, kept.tolist())) == sorted(map(tuple, visible[n].tolist()))
        restored = torch.cat([visible[n], torch.zeros(length - keep, 8)])[ids_restore[n]]
        assert torch.equal(restored[mask[n] == 0], kept)
        assert torch.equal(ids_restore[n].sort().values, torch.arange(length))
    with pytest.raises(ValueError, match="mask ratio must be in"):
        random_masking(x, 1.0)


def test_masking_repeats_with_the_seed_and_differs_per_sample():
    x = torch.randn(8, 36, 4)
    torch.manual_seed(5)
    first = random_masking(x, 0.75)
    torch.manual_seed(5)
    again = random_masking(x, 0.75)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    mask = first[1]
    assert len({tuple(row.tolist()) for row in mask}) > 1  # each sample its own patches
