"""Momentum (target) networks and MoCo's queue of keys: what MoCo and BYOL add to two views.

A target network is a frozen copy of the online one whose weights follow it by an
exponential moving average, θ_t ← m·θ_t + (1 − m)·θ (He et al., 2020; Grill et al., 2020),
with m rising from `start` to `end` on BYOL's cosine schedule. The queue holds the last K keys
(MoCo): each step's keys replace the oldest K/N batch's worth, so negatives come from many
past batches at the cost of none of their gradients.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters take no gradient (the optimiser skips them)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def cosine_momentum(step: int, total: int, start: float, end: float) -> float:
    """BYOL's schedule: m = end − (end − start)·(cos(π·step/total) + 1)/2, so `start` at step
    0 and `end` at the last step; `start == end` is a constant momentum."""
    return end - (end - start) * (math.cos(math.pi * min(step, total) / max(total, 1)) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """θ_target ← m·θ_target + (1 − m)·θ_online, parameter by parameter (buffers, such as
    BatchNorm's running statistics, are the target's own)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)


class KeyQueue(nn.Module):
    """MoCo's dictionary: a ring buffer of K L2-normalised keys, random unit vectors at first.

    Shape: `keys` (K, D); `push` takes (N, D) with K divisible by N.
    The buffers are part of the state dict, so a resumed run goes on with the same negatives.
    """

    keys: torch.Tensor
    pointer: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.register_buffer("keys", nn.functional.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Replaces the oldest len(keys) keys with `keys` (N, D)."""
        size, n = len(self.keys), len(keys)
        if size % n:
            raise ValueError(f"queue size {size} must be divisible by the batch of keys, {n}")
        start = int(self.pointer)
        self.keys[start : start + n] = keys.detach().to(self.keys.dtype)
        self.pointer.fill_((start + n) % size)

    def ordered(self) -> torch.Tensor:
        """The keys oldest first. Shape: (K, D)."""
        return torch.roll(self.keys, -int(self.pointer), dims=0)
