"""The contract every runtime implements, and what a runtime on a torch device adds to it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # only the GPU path has torch: nothing here imports it at run time
    import torch


class Tower(Protocol):
    """One encoder of a model version, ready to run.

    `__call__` takes a batch (float32 pixels (N, 3, H, W) or int64 ids (N, L)) and returns
    float32 (N, dim) embeddings, not normalised. It is called from worker threads, one batch
    at a time per instance; it must not keep references to its input.
    """

    providers: list[str]

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class DeviceTower(Tower, Protocol):
    """A tower that also takes inputs already on a torch device: what device preprocessing
    (`lens_server.pipeline`) hands its batches to, so pixels never cross back to the host.

    Both runtimes `lens_server.runtime.choose` opens are device towers: `OnnxTower` (through
    IO binding) and `ProgramTower`.
    """

    @property
    def device(self) -> str | torch.device:
        """Where the tower runs: "cpu", "cuda", or a torch device."""
        ...

    def run_device(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) on `device` → float32 (N, dim) on `device`, ordered on the current CUDA
        stream; called from worker threads, one batch at a time per thread."""
        ...
