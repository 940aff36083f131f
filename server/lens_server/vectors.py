"""Rows of vectors scaled to unit length, and the cosine similarity of two sets of rows.

One definition for the server (embeddings, classifier weights, cosine collections, the runtime
parity check) and for training's export parity, so they cannot disagree on a zero row.
"""

from __future__ import annotations

import numpy as np

# Norms below this count as zero: a zero row stays zero instead of becoming NaN.
EPSILON = np.float32(1e-12)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of `x` (N, D) scaled to unit length (zero rows stay zero); float32 stays float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return x / np.maximum(norms, EPSILON)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` (N, D) with the same row of `b` (N, D): (N,).

    A zero row has similarity 0 with anything.
    """
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=1)
