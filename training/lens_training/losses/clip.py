"""CLIP's symmetric InfoNCE with a learnable temperature.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
2021. Image i and text i are a positive pair; the loss is the mean of the image→text and
text→image cross entropies over the N × N cosine similarity matrix scaled by exp(logit_scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE.

    Shape:
        image, text: (N, D) features (normalised here); logit_scale: () the log of the scale.
        Returns: a scalar.
    """
    image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
    logits = logit_scale.exp() * image @ text.T  # (N, N)
    targets = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class ClipLoss(nn.Module):
    """The loss of a model that owns its `logit_scale` (open_clip's CLIP does)."""

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        return clip_loss(image, text, logit_scale)
