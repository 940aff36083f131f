"""Barlow Twins: the cross-correlation of two views' batch-standardised projections pulled
to the identity.

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", 2021:
C = a̅ᵀb̅ / N over the batch-standardised projections; L = Σᵢ (1 − Cᵢᵢ)² + λ·Σᵢ≠ⱼ Cᵢⱼ²,
λ = 5e-3 for their 8,192-wide projector. The invariance (on-diagonal) term makes the views
agree; the redundancy-reduction (off-diagonal) term decorrelates the dimensions, which is
what keeps the embedding from collapsing.
"""

from __future__ import annotations

import torch
from torch import nn


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each dimension to zero mean and unit (biased) variance over the batch, as a BatchNorm
    without affine parameters. Shape: (N, D) → (N, D)."""
    var, mean = torch.var_mean(z, dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Shape: z_a, z_b: (N, D) projections of two views → (D, D), entries in [−1, 1]."""
    return standardize(z_a).T @ standardize(z_b) / len(z_a)


def on_diagonal(c: torch.Tensor) -> torch.Tensor:
    """Σᵢ (1 − Cᵢᵢ)². Shape: (D, D) → a scalar."""
    return (1 - torch.diagonal(c)).pow(2).sum()


def off_diagonal(c: torch.Tensor) -> torch.Tensor:
    """Σᵢ≠ⱼ Cᵢⱼ². Shape: (D, D) → a scalar."""
    return c.pow(2).sum() - torch.diagonal(c).pow(2).sum()


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float) -> torch.Tensor:
    """Shape: z_a, z_b: (N, D), row i of each from image i; with several processes, the
    global batch (`training.distributed.gather_with_grad`). Returns: a scalar."""
    c = cross_correlation(z_a.float(), z_b.float())  # (D, D)
    return on_diagonal(c) + lambd * off_diagonal(c)


class BarlowTwinsLoss(nn.Module):
    def __init__(self, lambd: float = 5e-3) -> None:
        super().__init__()
        if not 0 <= lambd < float("inf"):
            raise ValueError(
                f"lambda (the off-diagonal weight) must be finite and >= 0, got {lambd}"
            )
        self.lambd = lambd

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return barlow_twins_loss(z_a, z_b, self.lambd)
