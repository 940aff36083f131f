"""Run by test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU).

Each rank embeds its half of a fixed global batch with a DDP-wrapped linear encoder, gathers
the embeddings with gradient, computes NT-Xent, CLIP, Barlow Twins and VICReg losses over the
global batch (the last two on its batch statistics), and backpropagates; the second view's
embeddings, gathered without gradient, go into a MoCo queue as its keys. Rank 0 writes the
loss, the synced gradients and the queue to the file named in argv.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from lens_training import distributed
from lens_training.losses import barlow_twins_loss, clip_loss, nt_xent, vicreg_loss
from lens_training.momentum import KeyQueue


def main(out: str) -> None:
    rank, world = distributed.setup(torch.device("cpu"))
    torch.manual_seed(0)
    encoder = nn.Linear(6, 4)
    inputs = torch.randn(2, 8, 6)  # two views (or image / text) of a global batch of 8
    model = nn.parallel.DistributedDataParallel(encoder)
    local = distributed.shard(torch.arange(8))
    z_a = distributed.gather_with_grad(model(inputs[0, local]))
    z_b = distributed.gather_with_grad(model(inputs[1, local]))
    loss = nt_xent(z_a, z_b, 0.5) + clip_loss(z_a, z_b, torch.tensor(2.0))
    loss = loss + barlow_twins_loss(z_a, z_b, 0.1) + vicreg_loss(z_a, z_b)
    loss.backward()
    queue = KeyQueue(16, 4)
    queue.push(distributed.gather(model(inputs[1, local]).detach()))
    if rank == 0:
        torch.save(
            {
                "world": world,
                "loss": loss.detach(),
                "grads": [p.grad.clone() for p in encoder.parameters()],
                "queue": queue.ordered(),
            },
            out,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Ends here without the interpreter's finalisation: after the process group is destroyed,
    # Gloo's threads can still abort a process that is finalising (SIGABRT, "terminate called
    # without an active exception"; about 1 run in 10 on a loaded 2-core machine, once in CI).
    # Everything under test is written by then, and an error before this line still fails.
    os._exit(0)
