"""Multi-process training with `torchrun`: process group, sharding, gathering negatives.

`gather_with_grad` concatenates every rank's rows with autograd through the collective
(`torch.distributed.nn.functional.all_gather`). Each rank then computes the loss of the whole
global batch; the collective's backward sums the gradients of each rank's rows over ranks (W
times the gradient), and DDP's mean over ranks divides by W again, so parameter gradients
equal those of one process on the global batch (tested with two gloo processes).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: torch.device) -> tuple[int, int]:
    """Joins the process group started by torchrun (if any); returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(n, D) per rank → (W·n, D), rank order, differentiable; `x` itself with one process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """(n, D) per rank → (W·n, D), rank order, without gradient (MoCo's keys for the queue);
    `x` itself with one process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a global batch of indices."""
    if not dist.is_initialized():
        return indices
    return indices.chunk(dist.get_world_size())[dist.get_rank()]
