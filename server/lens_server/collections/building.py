"""A collection's FAISS index made from its store: built whole, caught up with the log, and
the kind of index the collection has outgrown its current one for."""

from __future__ import annotations

import numpy as np

from lens_server.collections.faiss_index import IndexConfig, VectorIndex
from lens_server.collections.spec import CollectionSpec
from lens_server.collections.store import ItemStore

# Rows read from the store at a time while an index is filled.
_BATCH = 65_536


def build(store: ItemStore, spec: CollectionSpec, kind: str) -> VectorIndex:
    """A new index of `kind` holding every item of `store` (blocking). IVF-PQ trains on a
    sample of the items, and is flat while there are too few to train on; int8 storage
    trains its ranges likewise, and is float32 until there are enough."""
    count = store.count()
    if kind == "ivf-pq" and count < spec.index.min_train(count):
        kind = "flat"  # not enough vectors to train yet: exact until there are
    storage = spec.index.stored_as(count)
    train = np.empty((0, spec.dim), np.float32)
    if kind == "ivf-pq":
        train = _sample(store, max(spec.index.min_train(count), 100_000))
    elif storage == "int8":
        train = _sample(store, 100_000)
    index = VectorIndex.build(kind, spec.dim, spec.metric, spec.index, train, storage=storage)
    index.vectors_of = store.vectors
    for rows, vectors in store.scan():
        index.add(rows, vectors)
    return index


def replay(store: ItemStore, index: VectorIndex, after: int, present: set[int]) -> set[int]:
    """Applies the log after seq `after` to `index`, which holds the rows `present`.

    Row numbers are never reused, so the net effect of the tail is: remove the rows it
    removes that the index holds, add the rows it adds and does not remove. Returns the
    index's tombstones (HNSW keeps removed rows until it is rebuilt).
    """
    added: set[int] = set()
    removed: set[int] = set()
    for _, op, row in store.log_after(after):
        (added if op == "add" else removed).add(row)
    index.remove(sorted(removed & present))
    fresh = sorted(added - removed - present)
    for start in range(0, len(fresh), _BATCH):
        rows, vectors = store.vectors(fresh[start : start + _BATCH])
        index.add(rows, vectors)
    if index.kind != "hnsw":
        return set()
    return set(index.rows().tolist()) - set(store.matching({}).tolist())


def outgrown(config: IndexConfig, index: VectorIndex, max_tombstones: float) -> str | None:
    """The kind of index to rebuild `index` as, or None while it fits: `auto` outgrew its
    type, IVF-PQ has enough vectors to train (or outgrew its lists), int8 storage has enough
    to train its ranges, the index stores vectors otherwise than configured (after a
    re-index), or HNSW holds more than `max_tombstones` of its vectors as tombstones."""
    live = index.live
    target = config.target(live)
    if target == "ivf-pq" and live < config.min_train(live):
        target = "flat"  # exact until there is enough to train on
    wants = target != index.kind or config.stored_as(live) != index.storage
    if index.kind == "hnsw":
        wants |= len(index.tombstones) > max_tombstones * max(index.ntotal, 1)
    if index.kind == "ivf-pq" and not config.ivf_nlist:
        wants |= config.nlist(live) > 2 * index.nlist
    return target if wants else None


def _sample(store: ItemStore, count: int) -> np.ndarray:
    """The first `count` vectors of the store (n, dim): what IVF-PQ trains on."""
    parts, have = [], 0
    for _, vectors in store.scan():
        parts.append(vectors)
        have += len(vectors)
        if have >= count:
            break
    return np.concatenate(parts)[:count] if parts else np.empty((0, store.dim), np.float32)
