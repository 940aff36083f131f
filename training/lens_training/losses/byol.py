"""BYOL's loss: the normalised MSE between the online prediction of one view and the target
projection of the other, symmetrised over the two views; no negatives.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", 2020:
‖p̄ − z̄′‖² = 2 − 2·cos(p, z′) per image; the loss is that of (view 1 → view 2) plus that of
(view 2 → view 1), each a mean over the batch. No gradient reaches the target projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def normalized_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ‖p/‖p‖ − z/‖z‖‖² = 2 − 2·cos(p, z).

    Shape: prediction, target: (N, D) → a scalar (gradient to `prediction` only).
    """
    p = F.normalize(prediction, dim=1)
    z = F.normalize(target.detach(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


def byol_loss(
    p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor
) -> torch.Tensor:
    """The symmetric loss, in [0, 8].

    Shape:
        p_a, p_b: (N, D) online predictions of views a and b; z_a, z_b: (N, D) target
        projections of views a and b.
        Returns: a scalar.
    """
    return normalized_mse(p_a, z_b) + normalized_mse(p_b, z_a)


class BYOLLoss(nn.Module):
    def forward(
        self, p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor
    ) -> torch.Tensor:
        return byol_loss(p_a, p_b, z_a, z_b)
