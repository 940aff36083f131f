"""How a collection's items are PostgreSQL rows: lens's metadata filter as an SQL condition on
the JSONB `metadata` column (with parameters, never values written into the text), and the
view of the rows that the browse pages read as a store."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lens_server.collections.held import EngineStoreView, metadata_text
from lens_server.collections.pgvector_engine import quoted
from lens_server.collections.store import filter_terms

if TYPE_CHECKING:
    from lens_server.collections.pgvector import PgCollection

BATCH = 1000


class StoreView(EngineStoreView):
    """What the browse pages read of a collection's store (`ItemStore`'s names). Rows are the
    table's `row` numbers, which every replica sees alike."""

    _c: PgCollection

    def sources(self, ids: Sequence[str]) -> dict[str, tuple[str, bytes | None]]:
        table = quoted(self._c._table)
        with self._c.engine.connection(f"reading collection {self._c.spec.name}") as conn:
            rows = conn.execute(
                f"SELECT id, source_kind, source FROM {table} WHERE id = ANY(%s)", (list(ids),)
            ).fetchall()
        return {
            id_: (kind, bytes(source) if source is not None else None) for id_, kind, source in rows
        }

    def scan(self, batch: int = BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, vectors (n, dim)) in row order, `batch` at a time."""
        for found in self._c._scan(self._c._table, "row, vector", batch=batch):
            rows = np.array([r[0] for r in found], np.int64)
            yield rows, np.stack([as_array(r[1]) for r in found])

    def by_rows(self, rows: Sequence[int]) -> dict[int, tuple[str, str]]:
        """row → (id, metadata) of the rows still in the collection."""
        table = quoted(self._c._table)
        with self._c.engine.connection(f"reading collection {self._c.spec.name}") as conn:
            found = conn.execute(
                f"SELECT row, id, metadata FROM {table} WHERE row = ANY(%s)",
                ([int(r) for r in rows],),
            ).fetchall()
        return {int(row): (id_, metadata_text(meta)) for row, id_, meta in found}


def as_array(value: Any) -> np.ndarray:
    """A vector as pgvector's adapter reads it (its `Vector`, or an array) as (dim,) float32."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, np.float32)


def pg_filter(filter_: dict[str, Any]) -> tuple[str, list[Any]]:
    """lens's metadata filter (key: value, or key: {"in": [values]}, all keys to match) as an
    SQL condition on `metadata` and its parameters. JSONB equality keeps JSON's types apart,
    as the SQLite translation does: true is not 1, and null matches a key present as null."""
    clauses, params = [], []
    for key, values in filter_terms(filter_):
        ors = []
        for value in values:
            ors.append("metadata -> %s = %s::jsonb")
            params.extend([key, json.dumps(value)])
        clauses.append("(" + " OR ".join(ors) + ")")
    return " AND ".join(clauses), params
