"""MAE's random masking: keep a random subset of patches per image.

He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021 (`random_masking` of
the reference implementation): per-sample shuffling by argsort of uniform noise.
"""

from __future__ import annotations

import torch


def random_masking(
    x: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hides `ratio` of the patches of each sample.

    Shape:
        x: (N, L, D) patch tokens.
        Returns: visible (N, L_keep, D) with L_keep = round(L · (1 − ratio)); mask (N, L),
        1 for hidden patches, 0 for visible ones, in the original order; ids_restore (N, L),
        the permutation that puts [visible, hidden] tokens back in the original order.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    n, length, dim = x.shape
    keep = round(length * (1 - ratio))
    noise = torch.rand(n, length, device=x.device)  # (N, L)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the first `keep` stay
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (N, L)
    ids_keep = ids_shuffle[:, :keep]  # (N, L_keep)
    visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (N, L_keep, D)
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (N, L) in the original patch order
    return visible, mask, ids_restore
