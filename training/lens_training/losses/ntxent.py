"""NT-Xent, the normalised temperature-scaled cross entropy of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", 2020.
Each of the 2N views is classified against the other 2N − 1: its positive is the other view of
the same image, the 2N − 2 views of the other images are its negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean NT-Xent over the 2N views.

    Shape:
        z_a, z_b: (N, D), the projections of two views of the same N images, row i of each
        coming from image i. With gathered negatives, pass the global batch (see
        `training.distributed.gather_with_grad`).
        Returns: a scalar.
    """
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)  # (2N, D)
    logits = z @ z.T / temperature  # (2N, 2N)
    logits.fill_diagonal_(float("-inf"))  # a view is not its own candidate
    # view i's positive is view i + N, and view i + N's is view i
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class NTXentLoss(nn.Module):
    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return nt_xent(z_a, z_b, self.temperature)
