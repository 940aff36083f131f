"""VICReg: variance, invariance and covariance regularisation of two views' projections.

Bardes et al., "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", 2022. Invariance: the mean squared distance between the views. Variance: a hinge
keeping each dimension's standard deviation over the batch at least γ = 1 (the mean of
max(0, γ − √(Var + ε)) over the dimensions). Covariance: the sum of the squared off-diagonal
covariances divided by D. Loss = 25·invariance + 25·variance + 1·covariance by default, the
last two summed over both views and the variance halved, as the paper's code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def invariance(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the views. Shape: (N, D), (N, D) → a scalar."""
    return F.mse_loss(z_a, z_b)


def variance(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Mean over dimensions of max(0, γ − std), std = √(Var + ε) over the batch (unbiased).
    Shape: (N, D) → a scalar; zero when every dimension's std is at least γ."""
    std = torch.sqrt(z.var(dim=0) + eps)  # (D,)
    return F.relu(gamma - std).mean()


def covariance(z: torch.Tensor) -> torch.Tensor:
    """Σᵢ≠ⱼ Cov(z)ᵢⱼ² / D over the batch. Shape: (N, D) → a scalar."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)  # (D, D)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """Shape: z_a, z_b: (N, D), row i of each from image i; with several processes, the
    global batch (`training.distributed.gather_with_grad`). Returns: a scalar."""
    z_a, z_b = z_a.float(), z_b.float()
    return (
        invariance_weight * invariance(z_a, z_b)
        + variance_weight * (variance(z_a, gamma) + variance(z_b, gamma)) / 2
        + covariance_weight * (covariance(z_a) + covariance(z_b))
    )


class VICRegLoss(nn.Module):
    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        gamma: float = 1.0,
    ) -> None:
        super().__init__()
        weights = {
            "invariance_weight": invariance_weight,
            "variance_weight": variance_weight,
            "covariance_weight": covariance_weight,
            "gamma": gamma,
        }
        for name, value in weights.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not any((invariance_weight, variance_weight, covariance_weight)):
            raise ValueError("at least one of the VICReg loss weights must be > 0")
        self.weights = (invariance_weight, variance_weight, covariance_weight)
        self.gamma = gamma

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return vicreg_loss(z_a, z_b, *self.weights, gamma=self.gamma)
