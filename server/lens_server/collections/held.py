"""What a collection held in an external engine (Milvus, PostgreSQL with pgvector) does the
same way whichever engine holds it: reads by id, near-duplicates, the description, the record
that names its spec and re-index target. Each engine's class (`milvus.MilvusCollection`,
`pgvector.PgCollection`) supplies the engine's reads (`_by_ids`, `_vector_batches`,
`_count`) and its writes, searches and re-index.

Near-duplicate pairs are scored here: the vectors streamed out of the engine go into a flat
FAISS index, range-searched at the threshold, so every backend ranks pairs by the same scores
as the FAISS backend.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lens_server.collections.faiss_index import VectorIndex
from lens_server.collections.milvus_engine import Record
from lens_server.collections.shadow import ReindexState, route_write
from lens_server.collections.spec import CollectionSpec, ModelVersion
from lens_server.collections.store import NewItem, StoredRow
from lens_server.errors import InvalidInput


class EngineCollection:
    """The engine-independent half of a collection whose items and index live in an engine."""

    backend: str
    # Seconds a search trusts the record it read (see `refresh`).
    FRESH_S = 1.0

    def __init__(self, engine: Any, record: Record) -> None:
        self.engine = engine
        self._record = record
        self._write = threading.Lock()
        self._seq = 0  # the last write acknowledged through this server
        self._read_at = time.monotonic()

    @property
    def spec(self) -> CollectionSpec:
        return self._record.spec

    @property
    def reindex_target(self) -> ModelVersion | None:
        return self._record.target

    @property
    def _table(self) -> str:
        """The engine's name of the serving table."""
        raise NotImplementedError

    @property
    def reindexing(self) -> ReindexState | None:
        raise NotImplementedError

    def refresh(self, force: bool = False) -> None:
        """Reads the record again when it is over `FRESH_S` old (or `force`): another replica
        may have begun, cancelled or finished a re-index meanwhile."""
        now = time.monotonic()
        if not force and now - self._read_at < self.FRESH_S:
            return
        record = self.engine.record(self.spec.name)
        self._read_at = now
        if record is not None and record != self._record:
            self._follow(record)

    def _follow(self, record: Record) -> None:
        """Takes `record`, which another replica wrote, as this collection's."""
        self._record = record

    def close(self) -> None:
        """Nothing to flush: the engine holds every acknowledged write."""

    # -- reads -------------------------------------------------------------------------------

    def get(self, ids: Sequence[str]) -> list[StoredRow]:
        found = self._by_ids(list(dict.fromkeys(ids)))
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    def vectors_of(self, ids: Sequence[str]) -> np.ndarray:
        found = self._by_ids(list(dict.fromkeys(ids)))
        missing = [i for i in ids if i not in found]
        if missing:
            raise InvalidInput(f"query id {missing[0]!r} is not in collection {self.spec.name}")
        return np.stack([found[i].vector for i in ids])

    def duplicates(self, threshold: float, max_pairs: int) -> list[tuple[str, str, float]]:
        """Pairs of distinct items at least `threshold` similar, most similar first (the
        vectors are streamed out of the engine into a flat index here)."""
        ids: list[str] = []
        chunks: list[np.ndarray] = []
        for batch_ids, vectors in self._vector_batches():
            ids.extend(batch_ids)
            chunks.append(vectors)
        vectors = np.concatenate(chunks) if chunks else np.empty((0, self.spec.dim), np.float32)
        return duplicate_pairs(self.spec, ids, vectors, threshold, max_pairs)

    def describe(self) -> dict[str, Any]:
        self.refresh()
        return {
            "count": self._count(self._table),
            "built_type": self.engine_index(),
            "built_storage": "float32",
            "memory_bytes": 0,  # the engine's, not this server's
            "snapshot_seq": 0,
            "snapshot_time": 0.0,
            "seq": self._seq,
            "rebuilding": False,
            "reindex": self.reindexing,
        }

    def engine_table(self) -> str:
        """The engine's name that searches go to."""
        return self._table

    def engine_index(self) -> str:
        return f"{self.backend}-{'flat' if self.spec.index.type == 'flat' else 'hnsw'}"

    # -- writes ------------------------------------------------------------------------------

    def _route(
        self,
        record: Record,
        items: Sequence[NewItem],
        next_vectors: tuple[int, np.ndarray] | None,
        version: int | None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(the items' vectors, their target-version vectors for the shadow or None) of a
        write to the collection `record` describes: `shadow.route_write`, as the FAISS
        backend's re-index routes it."""
        vectors = record.spec.prepare(np.stack([item.vector for item in items]))
        return route_write(record.spec, record.target, items, vectors, version, next_vectors)

    # -- what each engine supplies -------------------------------------------------------------

    def _by_ids(self, ids: list[str]) -> dict[str, StoredRow]:
        """The stored rows of those of `ids` (distinct) that are in the serving table."""
        raise NotImplementedError

    def _vector_batches(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every item of the serving table as (ids, vectors (n, dim)) batches."""
        raise NotImplementedError

    def _count(self, table: str) -> int:
        raise NotImplementedError


class EngineStoreView:
    """What the browse pages read of a collection's store (`ItemStore`'s names); each engine
    adds `sources`, `scan` and `by_rows`."""

    def __init__(self, collection: EngineCollection) -> None:
        self._c = collection

    def count(self) -> int:
        return self._c._count(self._c._table)

    def seq(self) -> int:
        return self._c._seq


def metadata_text(value: Any) -> str:
    """An engine's metadata (JSON text or the parsed object) as lens's compact JSON text."""
    if isinstance(value, str):
        value = json.loads(value or "{}")
    return json.dumps(value or {}, separators=(",", ":"), ensure_ascii=False)


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
