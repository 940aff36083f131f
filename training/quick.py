"""Small CPU runs on the built-in `mnist` set (4,000 / 1,000), about a minute each on two
cores: what the quality tests, `bench/train.py` and the demonstration model train."""

from __future__ import annotations

from typing import Any

PLANS: dict[str, dict[str, Any]] = {
    "clip": {"arch": "lens-tiny-clip", "steps": 200, "batch_size": 256, "lr": 2e-3},
    "simclr": {
        "arch": "lens-tiny-resnet",
        "steps": 150,
        "batch_size": 256,
        "lr": 2e-3,
        "optimizer": "adamw",
    },
    "mae": {"arch": "lens-tiny-vit", "steps": 300, "batch_size": 256, "lr": 3e-3},
}
