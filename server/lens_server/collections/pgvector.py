"""A collection that lives in PostgreSQL with pgvector: the same public surface as
`Collection` and `MilvusCollection` (upsert, delete, get, vectors_of, search, duplicates,
describe, the re-index calls, close), so the core and both transports use any of them.

The database is the source of truth and the index: an upsert returns once its transaction
committed (`INSERT ... ON CONFLICT (id) DO UPDATE`, so a retried write is idempotent), the
items' sources are kept for re-indexing, and the spec lives in the engine's meta table
(`pgvector_engine`). Every write reads the collection's record in its own transaction
(`FOR SHARE`), so a re-index begun or swapped by another replica is followed at once. A
re-index fills the shadow table with the target version's vectors while searches keep
answering from the serving one; the swap drops the serving table, renames the shadow over it
and records the new spec in one transaction. Methods block: the server calls them from
worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from lens_server.collections.collection import Hit
from lens_server.collections.held import EngineCollection, metadata_text
from lens_server.collections.milvus_engine import Record
from lens_server.collections.pgvector_engine import (
    MAX_EF_SEARCH,
    META,
    OPERATORS,
    PgEngine,
    quoted,
    table_names,
)
from lens_server.collections.pgvector_items import BATCH, StoreView, as_array, pg_filter
from lens_server.collections.shadow import ReindexState
from lens_server.collections.spec import (
    CollectionSpec,
    ModelVersion,
    check_dim,
    check_queries,
)
from lens_server.collections.store import NewItem, StoredRow
from lens_server.errors import FailedPrecondition, InvalidInput, Unavailable

_COLUMNS = "id, vector, metadata, source_kind, source, written"
_UPSERT = (
    "INSERT INTO {table} (" + _COLUMNS + ") VALUES (%s, %s, %s::jsonb, %s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET row = EXCLUDED.row, vector = EXCLUDED.vector, "
    "metadata = EXCLUDED.metadata, source_kind = EXCLUDED.source_kind, "
    "source = EXCLUDED.source, written = EXCLUDED.written"
)


class PgCollection(EngineCollection):
    """One collection in `engine`, described by `record` (see `milvus_engine.Record`)."""

    backend = "pgvector"
    engine: PgEngine

    def __init__(self, engine: PgEngine, record: Record) -> None:
        super().__init__(engine, record)
        self._tables = table_names(record.spec.name)
        self.store = StoreView(self)

    @classmethod
    def create(cls, engine: PgEngine, spec: CollectionSpec) -> PgCollection:
        spec = replace(spec, backend="pgvector")
        record = Record(spec, 0)
        table, _ = table_names(spec.name)
        with engine.connection(f"creating collection {spec.name}") as conn, conn.transaction():
            engine.create_table(conn, spec, table, spec.dim)
            engine.save(record, conn)
        return cls(engine, record)

    @property
    def _table(self) -> str:
        return self._tables[0]

    @property
    def _next(self) -> str:
        """The shadow table a re-index fills."""
        return self._tables[1]

    def drop(self) -> None:
        name = self.spec.name
        with self.engine.connection(f"dropping collection {name}") as conn, conn.transaction():
            conn.execute(f"DELETE FROM {META} WHERE name = %s", (name,))
            conn.execute(f"DROP TABLE IF EXISTS {quoted(self._table)}, {quoted(self._next)}")

    # -- writes ------------------------------------------------------------------------------

    def upsert(
        self,
        items: Sequence[NewItem],
        next_vectors: tuple[int, np.ndarray] | None = None,
        version: int | None = None,
    ) -> int:
        """Stores `items` (committed on return); the write's sequence number."""
        for i, item in enumerate(items):
            if not item.id:
                raise InvalidInput(f"item {i}: id is empty")
        name = self.spec.name
        with self._write, self.engine.connection(f"upsert into collection {name}") as conn:
            for _ in range(3):  # again when another replica changed the record meanwhile
                record = self._record
                vectors, next_ = self._route(record, items, next_vectors, version)
                with conn.transaction():
                    if self._locked_record(conn) != record:
                        continue
                    self._seq = max(self._seq + 1, time.time_ns() // 1000)
                    rows = [
                        _row(item, v, self._seq) for item, v in zip(items, vectors, strict=True)
                    ]
                    with conn.cursor() as cursor:
                        cursor.executemany(_UPSERT.format(table=quoted(self._table)), rows)
                        if record.target is not None and next_ is not None:
                            shadow = [
                                _row(item, v, self._seq)
                                for item, v in zip(items, next_, strict=True)
                            ]
                            cursor.executemany(_UPSERT.format(table=quoted(self._next)), shadow)
                        elif record.target is not None:  # they stay pending for the driver
                            cursor.execute(
                                f"DELETE FROM {quoted(self._next)} WHERE id = ANY(%s)",
                                ([item.id for item in items],),
                            )
                    return self._seq
        raise Unavailable(f"collection {name} kept changing during an upsert: try again")

    def _locked_record(self, conn: Any) -> Record | None:
        """The record as the current transaction holds it: a re-index cannot begin, cancel
        or swap until it commits."""
        row = conn.execute(
            f"SELECT record FROM {META} WHERE name = %s FOR SHARE", (self.spec.name,)
        ).fetchone()
        record = Record.from_row({"record": row[0]}) if row else None
        if record is not None and record != self._record:
            self._record = record
        return record

    def delete(self, ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        name = self.spec.name
        with self._write, self.engine.connection(f"delete from collection {name}") as conn:
            with conn.transaction():
                self._locked_record(conn)
                removed = conn.execute(
                    f"DELETE FROM {quoted(self._table)} WHERE id = ANY(%s)", (ids,)
                ).rowcount
                if self._record.target is not None:
                    conn.execute(f"DELETE FROM {quoted(self._next)} WHERE id = ANY(%s)", (ids,))
            self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return int(removed)

    # -- reads -------------------------------------------------------------------------------

    def _by_ids(self, ids: list[str]) -> dict[str, StoredRow]:
        table = quoted(self._table)
        with self.engine.connection(f"reading collection {self.spec.name}") as conn:
            rows = conn.execute(
                f"SELECT row, id, vector, metadata, source_kind FROM {table} WHERE id = ANY(%s)",
                (ids,),
            ).fetchall()
        return {
            id_: StoredRow(int(row), id_, as_array(v), metadata_text(meta), kind)
            for row, id_, v, meta, kind in rows
        }

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filter_: dict[str, Any] | None = None,
        exact: bool = False,
        version: int | None = None,
    ) -> list[list[Hit]]:
        """The k nearest items of each query (n, dim), closest first, where metadata match
        `filter_`; `exact` bypasses the HNSW index (a scan of every matching row).

        pgvector's HNSW filters after the index scan: a filter that few items match can
        leave fewer than k hits of the ef_search candidates (`exact` finds them all)."""
        self.refresh()
        spec = self.spec
        queries = spec.prepare(queries)
        check_queries(spec, queries, version)
        condition, params = pg_filter(filter_) if filter_ else ("", [])
        operator = OPERATORS[spec.metric]
        sql = (
            f"SELECT id, vector {operator} %s AS d, metadata FROM {quoted(self._table)}"
            + (f" WHERE {condition}" if condition else "")
            + f" ORDER BY vector {operator} %s LIMIT %s"
        )
        ef = min(MAX_EF_SEARCH, max(spec.index.hnsw_ef_search, k))
        args = [(query, *params, query, k) for query in queries]
        if exact:
            settings = {"enable_indexscan": "off"}
        elif spec.index.type != "flat":
            # PostgreSQL's planner costs a scan of rows whose vectors are TOASTed as cheap and
            # picks it (an exact scan, 10x slower) over the index on tables of a few thousand.
            settings = {"hnsw.ef_search": str(ef), "enable_seqscan": "off"}
        else:
            settings = {}
        with self.engine.connection(f"search in collection {spec.name}") as conn:
            results = _pipelined(conn, settings, sql, args)
        return [
            [Hit(id_, _score(spec.metric, d), metadata_text(m)) for id_, d, m in rows]
            for rows in results
        ]

    # -- re-indexing with another model version ----------------------------------------------

    @property
    def reindexing(self) -> ReindexState | None:
        target = self._record.target
        if target is None:
            return None
        total = self._count(self._table)
        done = self.engine.count(self._next, f"counting the shadow of {self.spec.name}")
        if done is None:  # swapped or cancelled meanwhile: what the record says now
            self.refresh(force=True)
            target = self._record.target
            if target is None:
                return None
            done = 0
        return ReindexState(target.model, target.version, target.dim, min(done, total), total)

    def begin_reindex(self, model: str, version: int, dim: int) -> None:
        """Starts re-embedding every item into the shadow table; resumes when that target is
        in progress already, starts over when another is."""
        self.refresh(force=True)
        spec = self.spec
        if not spec.model:
            raise InvalidInput(f"collection {spec.name} holds vectors only: it has no model")
        target = ModelVersion(model, version, dim)
        if (model, version) == (spec.model, spec.version):
            raise FailedPrecondition(f"collection {spec.name} is at {model} version {version}")
        with (
            self._write,
            self.engine.connection(f"re-indexing {spec.name}") as conn,
            conn.transaction(),
        ):
            record = self._locked_for_update(conn)
            if record.target == target:
                return
            raw = conn.execute(
                f"SELECT count(*) FROM {quoted(self._table)} WHERE source_kind = 'vector'"
            ).fetchone()[0]
            if raw:
                raise FailedPrecondition(
                    f"collection {spec.name} holds {raw} items given as raw vectors: they "
                    f"cannot be re-embedded with {model} version {version}"
                )
            self.engine.create_table(conn, record.spec, self._next, dim)
            self._record = replace(record, target=target)
            self.engine.save(self._record, conn)

    def cancel_reindex(self) -> None:
        with (
            self._write,
            self.engine.connection(f"cancelling {self.spec.name}") as conn,
            conn.transaction(),
        ):
            record = self._locked_for_update(conn)
            if record.target is None:
                return
            conn.execute(f"DROP TABLE IF EXISTS {quoted(self._next)}")
            self._record = replace(record, target=None)
            self.engine.save(self._record, conn)

    def _locked_for_update(self, conn: Any) -> Record:
        row = conn.execute(
            f"SELECT record FROM {META} WHERE name = %s FOR UPDATE", (self.spec.name,)
        ).fetchone()
        if row is None:
            raise FailedPrecondition(f"collection {self.spec.name} was dropped")
        self._record = Record.from_row({"record": row[0]})
        return self._record

    def pending_sources(self, limit: int, after: int = 0) -> list[tuple[int, str, bytes | None]]:
        """(row, source kind, source) of up to `limit` items after row `after` that lack a
        vector of the target version, in row order (rows are the table's, alike on every
        replica; a write of an item gives it a new one)."""
        if self._record.target is None:
            return []
        sql = (
            f"SELECT s.row, s.source_kind, s.source FROM {quoted(self._table)} s "
            f"WHERE s.row > %s AND NOT EXISTS (SELECT 1 FROM {quoted(self._next)} n "
            "WHERE n.id = s.id) ORDER BY s.row LIMIT %s"
        )
        with self.engine.connection(f"reading the shadow of {self.spec.name}") as conn:
            rows = conn.execute(sql, (after, limit)).fetchall()
        return [(int(r), kind, bytes(s) if s is not None else None) for r, kind, s in rows]

    def put_reindexed(
        self, rows: np.ndarray, vectors: np.ndarray, version: int | None = None
    ) -> int:
        """Stores the target version's `vectors` (n, dim) of `rows` in the shadow, skipping
        items removed or written again meanwhile (their row is gone). How many were stored."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(rows):
            raise InvalidInput(
                f"{len(rows)} rows need ({len(rows)}, dim) vectors, got {vectors.shape}"
            )
        target = self._record.target
        if target is None or version not in (None, target.version) or not len(rows):
            return 0
        vectors = self.spec.prepare(vectors)
        check_dim(vectors, target.dim, f"{target.model} version {target.version}")
        sql = (
            f"INSERT INTO {quoted(self._next)} ({_COLUMNS}) "
            "SELECT s.id, %s, s.metadata, s.source_kind, s.source, s.written "
            f"FROM {quoted(self._table)} s WHERE s.row = %s ON CONFLICT (id) DO NOTHING"
        )
        stored = 0
        with (
            self.engine.connection(f"writing the shadow of {self.spec.name}") as conn,
            conn.transaction(),
        ):
            for row, vector in zip(rows.tolist(), vectors, strict=True):
                stored += conn.execute(sql, (vector, row)).rowcount
        return stored

    def finish_reindex(self) -> bool:
        """Swaps the shadow in once every item has a vector of the target version: in one
        transaction the serving table is dropped, the shadow renamed over it and the new spec
        recorded. True when no re-index remains; False while an item lacks a vector."""
        serving, shadow = quoted(self._table), quoted(self._next)
        with self._write, self.engine.connection(f"swapping {self.spec.name}") as conn:
            with conn.transaction():
                record = self._locked_for_update(conn)
                target = record.target
                if target is None:
                    return True  # a replica swapped it in already
                # Writers wait from here to the commit; searches too, for the rename.
                conn.execute(f"LOCK TABLE {serving}, {shadow} IN EXCLUSIVE MODE")
                pending = conn.execute(
                    f"SELECT EXISTS (SELECT 1 FROM {serving} s WHERE NOT EXISTS "
                    f"(SELECT 1 FROM {shadow} n WHERE n.id = s.id))"
                ).fetchone()[0]
                if pending:
                    return False
                conn.execute(
                    f"DELETE FROM {shadow} n WHERE NOT EXISTS "
                    f"(SELECT 1 FROM {serving} s WHERE s.id = n.id)"
                )
                conn.execute(f"DROP TABLE {serving}")
                conn.execute(f"ALTER TABLE {shadow} RENAME TO {serving}")
                spec = replace(
                    record.spec, model=target.model, version=target.version, dim=target.dim
                )
                new = Record(spec, record.generation + 1)
                self.engine.save(new, conn)
            self._record = new
            return True

    # -- helpers -----------------------------------------------------------------------------

    def _vector_batches(self) -> Iterator[tuple[list[str], np.ndarray]]:
        for batch in self._scan(self._table, "id, vector"):
            yield [r[0] for r in batch], np.stack([as_array(r[1]) for r in batch])

    def _count(self, table: str) -> int:
        found = self.engine.count(table, f"counting collection {self.spec.name}")
        if found is None:
            raise Unavailable(f"collection {self.spec.name} was dropped")
        return found

    def _scan(self, table: str, columns: str, batch: int = BATCH) -> Iterator[list[tuple]]:
        """The rows' `columns` in row order, `batch` at a time, through a server-side cursor."""
        with (
            self.engine.connection(f"reading collection {self.spec.name}") as conn,
            conn.transaction(),
            conn.cursor(name="lens_scan") as cursor,
        ):
            cursor.itersize = batch
            cursor.execute(f"SELECT {columns} FROM {quoted(table)} ORDER BY row")
            while found := cursor.fetchmany(batch):
                yield found


def _pipelined(
    conn: Any, settings: dict[str, str], sql: str, args: list[tuple[Any, ...]]
) -> list[list[tuple]]:
    """The rows of `sql` for each of `args`, run in one transaction with `settings` local to
    it, every statement sent in one pipeline: one round trip for a batch of queries, where a
    transaction, a `SET LOCAL` and a statement per query took one each."""
    with conn.pipeline(), conn.transaction():
        for name, value in settings.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        cursors = [conn.execute(sql, a) for a in args]
    return [cursor.fetchall() for cursor in cursors]


def _row(item: NewItem, vector: np.ndarray, written: int) -> tuple[Any, ...]:
    return (item.id, vector, item.metadata or "{}", item.source_kind, item.source, written)


def _score(metric: str, distance: float) -> float:
    """pgvector's distance as lens's score: cosine similarity, inner product, or the squared
    L2 distance (as FAISS reports it)."""
    if metric == "cosine":
        return 1.0 - float(distance)
    if metric == "inner_product":
        return -float(distance)
    return float(distance) ** 2
