"""PCA whitening of embeddings, fitted on training features and exported with the encoder.

Features trained to rebuild pixels (MAE) are dominated by a few directions of large variance
(ink, stroke width, position) that say little about what the image shows; cosine similarity
on them is poor. Centring and whitening equalises the directions (Jégou and Chum, "Negative
evidences and co-occurrences in image retrieval: the benefit of PCA and whitening", 2012),
the full-covariance form of the BatchNorm without affine parameters that He et al. put before
MAE's linear probe. Eigenvalues are shrunk towards their mean, so near-empty directions are
not blown up into noise.
"""

from __future__ import annotations

import torch
from torch import nn


class Whitening(nn.Module):
    """x ↦ (x − mean) · W, identity until `fit`. Shape: (N, D) → (N, D)."""

    mean: torch.Tensor
    matrix: torch.Tensor

    def __init__(self, dim: int, shrink: float = 0.01) -> None:
        super().__init__()
        self.shrink = shrink
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Fits mean and W = V · diag(λ + shrink · mean λ)^−½ · Vᵀ to features (N, D)."""
        x = features.double()
        mean = x.mean(dim=0)
        eigenvalues, vectors = torch.linalg.eigh(torch.cov((x - mean).T).reshape(len(mean), -1))
        eigenvalues = eigenvalues.clamp_min(0)
        eigenvalues = eigenvalues + self.shrink * eigenvalues.mean() + 1e-12
        self.mean.copy_(mean)
        self.matrix.copy_((vectors * eigenvalues.rsqrt()) @ vectors.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) @ self.matrix.to(x.dtype)
