"""InfoNCE against a queue of negatives, MoCo's contrastive loss.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", 2020 (MoCo);
Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020 (MoCo v2,
temperature 0.2). Query i's positive is key i (another view of the same image through the
momentum encoder); its negatives are the K keys of the queue, from earlier batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def info_nce_queue(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over queries of −log softmax of the positive among 1 + K candidates.

    Shape:
        query: (N, D) projections with gradient; key: (N, D) momentum projections (no
        gradient is taken through them); queue: (K, D) past keys. All normalised here.
        Returns: a scalar.
    """
    q = F.normalize(query, dim=1)
    k = F.normalize(key.detach(), dim=1)
    negatives = F.normalize(queue.detach(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    logits = torch.cat([positive, q @ negatives.T], dim=1) / temperature  # (N, 1 + K)
    targets = torch.zeros(len(q), dtype=torch.long, device=q.device)  # the positive is first
    return F.cross_entropy(logits, targets)


class MoCoLoss(nn.Module):
    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if not 0 < temperature < float("inf"):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        return info_nce_queue(query, key, queue, self.temperature)
