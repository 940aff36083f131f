"""Gathered negatives and batch statistics across two processes equal one process on the
global batch: NT-Xent, CLIP, Barlow Twins and VICReg losses and gradients, and the keys MoCo
puts in its queue."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from lens_training.losses import barlow_twins_loss, clip_loss, nt_xent, vicreg_loss
from lens_training.momentum import KeyQueue
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_loss_and_gradients_equal_single_process(tmp_path):
    out = tmp_path / "ddp.pt"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(ROOT / "tests" / "training" / "ddp_worker.py"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(out)
    assert ddp["world"] == 2

    torch.manual_seed(0)
    encoder = nn.Linear(6, 4)
    inputs = torch.randn(2, 8, 6)
    z_a, z_b = encoder(inputs[0]), encoder(inputs[1])
    loss = nt_xent(z_a, z_b, 0.5) + clip_loss(z_a, z_b, torch.tensor(2.0))
    loss = loss + barlow_twins_loss(z_a, z_b, 0.1) + vicreg_loss(z_a, z_b)
    loss.backward()
    queue = KeyQueue(16, 4)
    queue.push(z_b.detach())
    assert torch.allclose(ddp["loss"], loss.detach(), atol=1e-5)
    # the queue's newest 8 keys are the whole global batch's, in rank order
    assert torch.allclose(ddp["queue"][-8:], z_b.detach(), atol=1e-6)
    assert torch.allclose(ddp["queue"], queue.ordered(), atol=1e-6)
    for got, want in zip(ddp["grads"], [p.grad for p in encoder.parameters()], strict=True):
        assert torch.allclose(got, want, atol=1e-5), (got, want)
