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


# Embeddings as compact codes, as sentence-transformers' `quantize_embeddings` defines them.
ENCODINGS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_encoding(encoding: str) -> str:
    """`encoding`, or InvalidInput naming it when it is not one of ENCODINGS."""
    from lens_server.errors import InvalidInput

    if encoding not in ENCODINGS:
        raise InvalidInput(f"encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
    return encoding


def quantize(
    vectors: np.ndarray, encoding: str, ranges: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(codes, ranges) of `vectors` (N, D) in `encoding`, one of ENCODINGS.

    `int8` / `uint8`: each dimension mapped linearly from its range to 256 steps, the range
    being the per-dimension minimum and maximum of these vectors (sentence-transformers' rule
    when it is given no calibration set); codes (N, D) and ranges (2, D), rows min and max,
    so that a client can map codes back: min + (code [+ 128]) · (max − min) / 255. Given
    `ranges` (2, D) are used instead (sentence-transformers' `ranges`), values outside them
    clipped, so that codes of several calls agree.
    `binary` / `ubinary`: one bit a dimension, set where the component is > 0, packed eight
    to a byte (most significant first) per row: uint8 codes (N, ceil(D/8)), or int8 for
    `binary` (the byte minus 128). `float32`: the vectors themselves. InvalidInput names an
    unknown encoding.
    """
    from lens_server.errors import InvalidInput

    check_encoding(encoding)
    if encoding == "float32":
        return vectors.astype(np.float32, copy=False), None
    if encoding in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=1)  # (N, ceil(D/8))
        if encoding == "ubinary":
            return packed, None
        return (packed.astype(np.int16) - 128).astype(np.int8), None
    if ranges is None:
        ranges = np.stack([vectors.min(axis=0), vectors.max(axis=0)])  # (2, D)
    elif ranges.size != 2 * vectors.shape[1]:
        raise InvalidInput(
            f"ranges must hold 2 × {vectors.shape[1]} values (minimums, then maximums), "
            f"got {ranges.size}"
        )
    ranges = ranges.reshape(2, vectors.shape[1])
    ranges = ranges.astype(np.float32)
    steps = (ranges[1] - ranges[0]) / 255
    steps[steps <= 0] = 1  # a dimension with one value: code 0 (−128)
    scaled = np.clip((vectors - ranges[0]) / steps, 0, 255)  # (N, D)
    if encoding == "uint8":
        return scaled.astype(np.uint8), ranges
    return (scaled - 128).astype(np.int8), ranges
