"""Near-duplicate pairs of vectors streamed out of an engine (Milvus, PostgreSQL): a flat
FAISS index of them here, range-searched at the threshold, so every backend ranks pairs by the
same scores as the FAISS backend."""

from __future__ import annotations

import numpy as np

from lens_server.collections.faiss_index import VectorIndex
from lens_server.collections.spec import CollectionSpec


def duplicate_pairs(
    spec: CollectionSpec, ids: list[str], vectors: np.ndarray, threshold: float, max_pairs: int
) -> list[tuple[str, str, float]]:
    """Pairs of distinct items of `ids` (vectors (n, dim)) at least `threshold` similar (at
    most that far apart for l2), most similar first."""
    if not ids:
        return []
    rows = np.arange(len(ids), dtype=np.int64)
    empty = np.empty((0, spec.dim), np.float32)
    flat = VectorIndex.build("flat", spec.dim, spec.metric, spec.index, empty)
    flat.add(rows, vectors)
    limits, scores, hits = flat.range_search(vectors, threshold)
    pairs = []
    for a in range(len(ids)):
        span = slice(limits[a], limits[a + 1])
        for s, b in zip(scores[span].tolist(), hits[span].tolist(), strict=True):
            if b > a:
                pairs.append((float(s), a, int(b)))
    pairs.sort(key=lambda p: p[0], reverse=spec.metric != "l2")
    return [(ids[a], ids[b], s) for s, a, b in pairs[:max_pairs]]
