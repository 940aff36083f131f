"""The contract every runtime implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Tower(Protocol):
    """One encoder of a model version, ready to run.

    `__call__` takes a batch (float32 pixels (N, 3, H, W) or int64 ids (N, L)) and returns
    float32 (N, dim) embeddings, not normalised. It is called from worker threads, one batch
    at a time per instance; it must not keep references to its input.
    """

    providers: list[str]

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...
