"""MAE's reconstruction loss: mean squared error on the masked patches only, against
per-patch normalised pixels.

He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021 (norm_pix_loss).
"""

from __future__ import annotations

import torch
from torch import nn


def masked_pixel_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """Mean over masked patches of the per-patch mean squared error.

    Shape:
        prediction, target: (N, L, P) pixels per patch (P = patch² · 3); mask: (N, L), 1 where
        the patch was hidden from the encoder, 0 where it was visible.
        Returns: a scalar.
    """
    if norm_pix:
        var, mean = torch.var_mean(target, dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((prediction - target) ** 2).mean(dim=-1)  # (N, L)
    return (per_patch * mask).sum() / mask.sum()


class MaskedPixelLoss(nn.Module):
    def __init__(self, norm_pix: bool = True) -> None:
        super().__init__()
        self.norm_pix = norm_pix

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return masked_pixel_loss(prediction, target, mask, self.norm_pix)
