"""Heads used in training only, dropped at export: the projections of the two-view methods,
BYOL's predictor, MAE's decoder."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lens_training.masking import random_masking


class ProjectionHead(nn.Module):
    """An MLP of `layers` linear layers with BatchNorm and ReLU between them.

    Two layers (the default) are SimCLR's projection (Chen et al., 2020), MoCo v2's and BYOL's
    projection and BYOL's predictor (Grill et al., 2020: hidden 4,096, out 256); three layers
    of one width are the wide projectors of Barlow Twins (Zbontar et al., 2021) and VICReg
    (Bardes et al., 2022), 8,192 wide in the papers.
    Shape: (N, in_dim) → (N, out_dim).
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, layers: int = 2
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"a projection head needs at least one layer, got {layers}")
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers - 1):
            blocks += [
                nn.Linear(width, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
            width = hidden_dim
        self.net = nn.Sequential(*blocks, nn.Linear(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder: visible tokens + mask tokens → pixels of every patch.

    He et al., 2021: a narrow transformer over the full sequence with its own positional
    embedding; only used in pre-training.
    Shape: tokens (N, 1 + L_keep, width), ids_restore (N, L) → (N, L, patch² · 3).
    """

    def __init__(
        self,
        width: int,
        patches: int,
        patch_pixels: int,
        dim: int = 64,
        depth: int = 1,
        heads: int = 2,
    ) -> None:
        super().__init__()
        from open_clip.transformer import Transformer

        self.embed = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(0.02 * torch.randn(1, 1 + patches, dim))
        self.blocks: Any = Transformer(dim, depth, heads)
        self.norm = nn.LayerNorm(dim)
        self.predict = nn.Linear(dim, patch_pixels)

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (N, 1 + L_keep, dim)
        n, length = ids_restore.shape
        masks = self.mask_token.expand(n, length + 1 - x.shape[1], -1)  # (N, L - L_keep, dim)
        patches = torch.cat([x[:, 1:], masks], dim=1)  # (N, L, dim), shuffled order
        index = ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2])
        patches = torch.gather(patches, 1, index)  # (N, L, dim), original order
        x = torch.cat([x[:, :1], patches], dim=1) + self.position  # (N, 1 + L, dim)
        x = self.norm(self.blocks(x))
        return self.predict(x[:, 1:])  # (N, L, patch² · 3)


def encode_visible(
    vit: Any, pixels: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """open_clip's ViT run on a random `1 − ratio` of the patches of each image.

    Shape: pixels (N, 3, H, W) → tokens (N, 1 + L_keep, width), mask (N, L), ids_restore (N, L).
    """
    x = vit.conv1(pixels).flatten(2).transpose(1, 2)  # (N, L, width)
    x = x + vit.positional_embedding[1:].to(x.dtype)
    x, mask, ids_restore = random_masking(x, ratio)  # (N, L_keep, width)
    cls = (vit.class_embedding + vit.positional_embedding[0]).to(x.dtype)
    x = torch.cat([cls.expand(x.shape[0], 1, -1), x], dim=1)  # (N, 1 + L_keep, width)
    x = vit.transformer(vit.ln_pre(x))
    return vit.ln_post(x), mask, ids_restore


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 3, H, W) → (N, L, patch² · 3), patches in row-major order as the ViT sees them."""
    n, c, h, w = pixels.shape
    x = pixels.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)
