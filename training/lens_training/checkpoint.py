"""The checkpoint format: one `checkpoint.pt` per run, and a weights-only one per version.

A run's checkpoint holds the config beside the weights (as nanoGPT's do), so a run can be
rebuilt and resumed from it alone: `format`, `method`, `arch_name`, `arch`, `config`, `step`,
`total`, `model`, `optimizer`, `schedule`, `rng`, `baseline`, and `result` once it ended. A
repository version keeps the weights only (`weights_only`), for `lens train --init`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens_server.errors import LensError
from lens_server.repository import Repository
from lens_training.config import TrainConfig, TrainError

CHECKPOINT = "checkpoint.pt"
FORMAT = 1
WEIGHTS = ("format", "method", "arch_name", "arch", "config", "step", "model")


def load(path: Path) -> dict[str, Any]:
    """A checkpoint, on the CPU."""
    saved: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return saved


def save(path: Path, state: dict[str, Any]) -> Path:
    """Writes `state` to `path` whole or not at all (a crash mid-write leaves the old one)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def weights(
    method: str, arch_name: str, arch: dict[str, Any], model: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """A weights-only checkpoint of `method` on an architecture, from its state dict."""
    return {
        "format": FORMAT,
        "method": method,
        "arch_name": arch_name,
        "arch": arch,
        "model": model,
    }


def weights_only(saved: dict[str, Any]) -> dict[str, Any]:
    """What `--init` needs of a run's checkpoint: method, architecture and weights (no
    optimiser or RNG state)."""
    return {k: saved[k] for k in WEIGHTS if k in saved}


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from, to resume it exactly."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def config_of(saved: dict[str, Any]) -> TrainConfig:
    """The config a run's checkpoint was trained with."""
    config = saved["config"]
    return TrainConfig(**{**config, "templates": tuple(config["templates"])})


def of_version(repo: Path, ref: str) -> dict[str, Any]:
    """The weights checkpoint of repository version `NAME[:VERSION]` (for `--init`)."""
    name, _, version = ref.partition(":")
    repository = Repository(repo)
    try:
        number = int(version) if version else repository.latest(name)
        path = repository.path(name, number) / CHECKPOINT
    except (ValueError, LensError) as e:  # NotFound lists what exists
        raise TrainError(f"--init {ref}: {e}") from None
    if not path.is_file():
        raise TrainError(f"--init {ref}: the version has no {CHECKPOINT} to start from")
    saved = load(path)
    saved.setdefault("arch_name", name)
    saved.setdefault("arch", {})
    return saved


def check_compatible(
    saved: dict[str, Any], method: str, arch_name: str, arch: dict[str, Any], what: str
) -> None:
    """TrainError unless `saved` holds weights of `method` on architecture `arch`."""
    if saved.get("method") != method:
        raise TrainError(f"{what}: checkpoint is a {saved.get('method')} model, not {method}")
    if saved.get("arch") != arch:
        raise TrainError(
            f"{what}: checkpoint architecture {saved.get('arch_name')} differs from {arch_name}"
        )
