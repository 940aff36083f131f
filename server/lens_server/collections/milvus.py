"""A collection that lives in Milvus: the same public surface as `Collection` (upsert, delete,
get, vectors_of, search, duplicates, describe, the re-index calls, close), so the core and
both transports use either one.

Milvus is the source of truth and the index: an upsert returns once Milvus acknowledged it
(its write-ahead log makes it durable), the items' sources are kept there for re-indexing,
and the spec lives in the engine's meta table (`milvus_engine`). A re-index fills a shadow
table (the next generation) with the target version's vectors while searches keep answering
from the serving one; the swap records the new generation, then moves the alias to it.
Writes are upserts keyed by id, so a retried write is idempotent. Methods block: the server
calls them from worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from lens_server.collections.collection import Hit
from lens_server.collections.faiss_index import VectorIndex
from lens_server.collections.held import EngineCollection, metadata_text
from lens_server.collections.milvus_engine import (
    MAX_SOURCE_BYTES,
    MilvusEngine,
    Record,
    alias_name,
    table_name,
)
from lens_server.collections.milvus_items import (
    BATCH,
    StoreView,
    item_row,
    milvus_filter,
    source_of,
)
from lens_server.collections.shadow import ReindexState
from lens_server.collections.spec import (
    CollectionSpec,
    ModelVersion,
    check_dim,
    check_queries,
)
from lens_server.collections.store import NewItem, StoredRow
from lens_server.errors import FailedPrecondition, InvalidInput

_FIELDS = ["id", "vector", "metadata", "source_kind", "source", "written"]


class MilvusCollection(EngineCollection):
    """One collection in `engine`, described by `record` (see `milvus_engine.Record`)."""

    backend = "milvus"
    engine: MilvusEngine

    def __init__(self, engine: MilvusEngine, record: Record) -> None:
        super().__init__(engine, record)
        # Rows handed out by `pending_sources`: row → (id, the write it re-embeds).
        self._pending: dict[int, tuple[str, int]] = {}
        self._rows: dict[str, int] = {}
        self.store = StoreView(self)
        engine.point_alias(record.spec.name, record.generation)

    @classmethod
    def create(cls, engine: MilvusEngine, spec: CollectionSpec) -> MilvusCollection:
        spec = replace(spec, backend="milvus")
        engine.create_table(spec, 0, spec.dim)
        record = Record(spec, 0)
        engine.save(record)
        return cls(engine, record)

    def _follow(self, record: Record) -> None:
        with self._write:  # rows handed out for the old record are not the new one's
            self._record = record
            self._pending.clear()
            self._rows.clear()

    @property
    def _table(self) -> str:
        return alias_name(self.spec.name)

    @property
    def _shadow(self) -> str | None:
        record = self._record
        return table_name(record.spec.name, record.generation + 1) if record.target else None

    def drop(self) -> None:
        record = self._record
        self.engine.forget(record.spec.name)
        self.engine.drop_alias(record.spec.name)
        for generation in (record.generation, record.generation + 1):
            self.engine.drop_table(record.spec.name, generation)

    # -- writes ------------------------------------------------------------------------------

    def upsert(
        self,
        items: Sequence[NewItem],
        next_vectors: tuple[int, np.ndarray] | None = None,
        version: int | None = None,
    ) -> int:
        """Stores `items` (acknowledged by Milvus on return); the write's sequence number."""
        self.refresh()
        spec = self.spec
        for i, item in enumerate(items):
            if not item.id:
                raise InvalidInput(f"item {i}: id is empty")
            if item.source is not None and len(item.source) > MAX_SOURCE_BYTES:
                raise InvalidInput(
                    f"item {i}: source of {len(item.source)} bytes is over the milvus "
                    f"backend's {MAX_SOURCE_BYTES}"
                )
        target = self._record.target
        vectors, next_ = self._route(self._record, items, next_vectors, version)
        with self._write:
            written = time.time_ns() // 1000
            self._seq = max(self._seq + 1, written)
            rows = [item_row(item, v, self._seq) for item, v in zip(items, vectors, strict=True)]
            client = self.engine.client()
            with self.engine.errors(f"upsert into collection {spec.name}"):
                client.upsert(self._table, rows)
                shadow = self._shadow
                if shadow is not None and target is not None:
                    if next_ is not None:
                        client.upsert(
                            shadow,
                            [
                                item_row(item, v, self._seq)
                                for item, v in zip(items, next_, strict=True)
                            ],
                        )
                    else:  # they stay pending for the driver
                        client.delete(shadow, ids=[item.id for item in items])
            return self._seq

    def delete(self, ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        client = self.engine.client()
        with self._write, self.engine.errors(f"delete from collection {self.spec.name}"):
            present = client.query(self._table, ids=ids, output_fields=["id"])
            client.delete(self._table, ids=ids)
            if self._shadow is not None:
                client.delete(self._shadow, ids=ids)
            self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return len(present)

    # -- reads -------------------------------------------------------------------------------

    def _by_ids(self, ids: list[str]) -> dict[str, StoredRow]:
        client = self.engine.client()
        found: dict[str, StoredRow] = {}
        with self.engine.errors(f"reading collection {self.spec.name}"):
            for start in range(0, len(ids), BATCH):
                fields = ["id", "vector", "metadata", "source_kind", "written"]
                for row in client.query(
                    self._table, ids=ids[start : start + BATCH], output_fields=fields
                ):
                    found[row["id"]] = StoredRow(
                        int(row["written"]),
                        row["id"],
                        np.asarray(row["vector"], np.float32),
                        metadata_text(row["metadata"]),
                        row["source_kind"],
                    )
        return found

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filter_: dict[str, Any] | None = None,
        exact: bool = False,
        version: int | None = None,
    ) -> list[list[Hit]]:
        """The k nearest items of each query (n, dim), closest first, where metadata match
        `filter_`; `exact` scores every matching vector here instead of Milvus's index."""
        self.refresh()
        spec = self.spec
        queries = spec.prepare(queries)
        check_queries(spec, queries, version)
        expression = milvus_filter(filter_) if filter_ else ""
        if exact:
            return self._exact(queries, k, expression)
        params = {"params": {"ef": max(spec.index.hnsw_ef_search, k)}}
        client = self.engine.client()
        with self.engine.errors(f"search in collection {spec.name}"):
            found = client.search(
                self._table,
                data=queries.tolist(),
                limit=k,
                filter=expression,
                output_fields=["metadata"],
                search_params=params,
            )
        return [
            [
                Hit(hit["id"], float(hit["distance"]), metadata_text(hit["entity"]["metadata"]))
                for hit in row
            ]
            for row in found
        ]

    def _exact(self, queries: np.ndarray, k: int, expression: str) -> list[list[Hit]]:
        spec = self.spec
        empty = np.empty((0, spec.dim), np.float32)
        flat = VectorIndex.build("flat", spec.dim, spec.metric, spec.index, empty)
        ids: list[str] = []
        meta: list[str] = []
        for batch in self._scan(self._table, ["id", "vector", "metadata"], expression):
            rows = np.arange(len(ids), len(ids) + len(batch), dtype=np.int64)
            flat.add(rows, np.asarray([r["vector"] for r in batch], np.float32))
            ids.extend(r["id"] for r in batch)
            meta.extend(metadata_text(r["metadata"]) for r in batch)
        if not ids:
            return [[] for _ in queries]
        scores, found = flat.search(queries, k)
        score_rows: list[list[float]] = scores.tolist()
        found_rows: list[list[int]] = found.tolist()
        return [
            [Hit(ids[r], s, meta[r]) for s, r in zip(srow, rrow, strict=True) if r >= 0]
            for srow, rrow in zip(score_rows, found_rows, strict=True)
        ]

    # -- re-indexing with another model version ----------------------------------------------

    @property
    def reindexing(self) -> ReindexState | None:
        target, shadow = self._record.target, self._shadow
        if target is None or shadow is None:
            return None
        total = self._count(self._table)
        done = min(self._count(shadow), total)
        return ReindexState(target.model, target.version, target.dim, done, total)

    def begin_reindex(self, model: str, version: int, dim: int) -> None:
        """Starts re-embedding every item into a shadow table (the next generation); resumes
        when that target is in progress already, starts over when another is."""
        self.refresh(force=True)
        spec = self.spec
        if not spec.model:
            raise InvalidInput(f"collection {spec.name} holds vectors only: it has no model")
        target = ModelVersion(model, version, dim)
        if (model, version) == (spec.model, spec.version):
            raise FailedPrecondition(f"collection {spec.name} is at {model} version {version}")
        with self._write:
            if self._record.target == target:
                return
            raw = self._count(self._table, 'source_kind == "vector"')
            if raw:
                raise FailedPrecondition(
                    f"collection {spec.name} holds {raw} items given as raw vectors: they "
                    f"cannot be re-embedded with {model} version {version}"
                )
            generation = self._record.generation
            self.engine.create_table(replace(spec, dim=dim), generation + 1, dim)
            record = replace(self._record, target=target)
            self.engine.save(record)
            self._record = record
            self._pending.clear()
            self._rows.clear()

    def cancel_reindex(self) -> None:
        self.refresh(force=True)
        with self._write:
            record = self._record
            if record.target is None:
                return
            self._record = replace(record, target=None)
            self.engine.save(self._record)
            self.engine.drop_table(record.spec.name, record.generation + 1)

    def pending_sources(self, limit: int, after: int = 0) -> list[tuple[int, str, bytes | None]]:
        """(row, source kind, source) of up to `limit` items after row `after` that lack a
        vector of the target version; rows are numbers this server hands out, in order."""
        shadow = self._shadow
        if shadow is None:
            return []
        found: list[tuple[int, str, bytes | None]] = []
        client = self.engine.client()
        fields = ["id", "source_kind", "source", "written"]
        for batch in self._scan(self._table, fields):
            with self.engine.errors(f"reading the shadow of {self.spec.name}"):
                done = client.query(shadow, ids=[r["id"] for r in batch], output_fields=["id"])
            have = {r["id"] for r in done}
            for r in batch:
                if r["id"] in have:
                    continue
                row = self._rows.setdefault(r["id"], len(self._rows) + 1)
                self._pending[row] = (r["id"], int(r["written"]))
                if row > after:
                    found.append((row, r["source_kind"], source_of(r["source"])))
            if len(found) >= limit:
                break
        return sorted(found)[:limit]

    def put_reindexed(
        self, rows: np.ndarray, vectors: np.ndarray, version: int | None = None
    ) -> int:
        """Stores the target version's `vectors` (n, dim) of `rows` in the shadow, skipping
        items removed or written again meanwhile. How many were stored."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(rows):
            raise InvalidInput(
                f"{len(rows)} rows need ({len(rows)}, dim) vectors, got {vectors.shape}"
            )
        target, shadow = self._record.target, self._shadow
        if target is None or shadow is None or version not in (None, target.version):
            return 0
        vectors = self.spec.prepare(vectors)
        check_dim(vectors, target.dim, f"{target.model} version {target.version}")
        wanted = {
            self._pending[r][0]: (i, self._pending[r][1])
            for i, r in enumerate(rows.tolist())
            if r in self._pending
        }
        client = self.engine.client()
        with self._write, self.engine.errors(f"writing the shadow of {self.spec.name}"):
            current = client.query(self._table, ids=list(wanted), output_fields=_FIELDS)
            out = [
                {**r, "vector": vectors[wanted[r["id"]][0]].tolist()}
                for r in current
                if int(r["written"]) == wanted[r["id"]][1]
            ]
            if out:
                client.upsert(shadow, out)
        return len(out)

    def finish_reindex(self) -> bool:
        """Swaps the shadow in once every item has a vector of the target version: the new
        generation is recorded first (what every replica and a restart read), then the alias
        moves to it. True when no re-index remains; False while an item lacks a vector."""
        self.refresh(force=True)  # a replica may have swapped it in already
        with self._write:
            record = self._record
            if record.target is None:
                return True
            shadow = self._shadow
            assert shadow is not None
            if self._count(shadow) < self._count(self._table) or self._any_pending(shadow):
                return False
            target = record.target
            spec = replace(record.spec, model=target.model, version=target.version, dim=target.dim)
            new = Record(spec, record.generation + 1)
            self.engine.save(new)
            self.engine.point_alias(spec.name, new.generation)
            self._record = new
            self.engine.drop_table(spec.name, record.generation)
            self._pending.clear()
            self._rows.clear()
            return True

    def _any_pending(self, shadow: str) -> bool:
        client = self.engine.client()
        for batch in self._scan(self._table, ["id"]):
            with self.engine.errors(f"reading the shadow of {self.spec.name}"):
                done = client.query(shadow, ids=[r["id"] for r in batch], output_fields=["id"])
            if len(done) < len(batch):
                return True
        return False

    # -- helpers -----------------------------------------------------------------------------

    def _vector_batches(self) -> Iterator[tuple[list[str], np.ndarray]]:
        for batch in self._scan(self._table, ["id", "vector"]):
            yield [r["id"] for r in batch], np.asarray([r["vector"] for r in batch], np.float32)

    def _count(self, table: str, expression: str = "") -> int:
        client = self.engine.client()
        with self.engine.errors(f"counting collection {self.spec.name}"):
            rows = client.query(table, filter=expression, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _scan(
        self, table: str, fields: list[str], expression: str = ""
    ) -> Iterator[list[dict[str, Any]]]:
        client = self.engine.client()
        with self.engine.errors(f"reading collection {self.spec.name}"):
            iterator = client.query_iterator(
                table, batch_size=BATCH, filter=expression, output_fields=fields
            )
        try:
            while True:
                with self.engine.errors(f"reading collection {self.spec.name}"):
                    batch = iterator.next()
                if not batch:
                    return
                yield list(batch)
        finally:
            iterator.close()
