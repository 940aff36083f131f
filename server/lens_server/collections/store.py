"""The items of a collection and the log of their changes, in its SQLite database.

`items` holds every live item under its row number (the id FAISS knows it by), with its
vector, metadata and source (image bytes or text, kept so the collection can be re-embedded).
An upsert of an existing id deletes the old row and inserts a new one, so a row number is
never reused. `log` records every row added or removed, in write order (`seq`); the FAISS
index is a snapshot up to some `seq` plus the log after it. Once `upsert` returns, the items
are durable (see `sqlite`).

While the collection is re-indexed, each write here also keeps `next_vectors` (the next model
version's vectors, `next_vectors.NextVectors`) in step, in the same transaction: a removed
row loses its next vector, and a new row given one gets it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lens_server.collections.sqlite import Database, blob, chunks, matrix
from lens_server.errors import InvalidInput


@dataclass(frozen=True)
class NewItem:
    """An item ready to store: its vector (dim,) float32 and where it came from."""

    id: str
    vector: np.ndarray
    metadata: str
    source_kind: str  # "image", "text" or "vector"
    source: bytes | None


class Written(NamedTuple):
    """What one write did: rows removed and added, the seq after it, and the removed rows
    that had a next-version vector (while re-indexing)."""

    removed: list[int]
    added: list[int]
    seq: int
    removed_next: list[int]

    # An id given twice in one write adds a row and removes it again: no index holds it.
    def kept(self) -> list[int]:
        """Positions in `added` of the rows this write did not remove again."""
        removed = set(self.removed)
        return [i for i, row in enumerate(self.added) if row not in removed]

    def not_added(self, removed: list[int]) -> list[int]:
        """The rows of `removed` this write did not add (those an index holds)."""
        added = set(self.added)
        return [row for row in removed if row not in added]


@dataclass(frozen=True)
class StoredRow:
    row: int
    id: str
    vector: np.ndarray
    metadata: str
    source_kind: str


def check_metadata(raw: str, where: str) -> str:
    """A JSON object as compact text; InvalidInput otherwise."""
    if not raw:
        return "{}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{where}: metadata is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: metadata must be a JSON object, got {type(value).__name__}")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class ItemStore:
    """The items and the log of one collection. Thread-safe: `db`'s one connection, one lock.

    `dim` is the dimension of the stored vectors (it changes when a re-index swaps).
    """

    def __init__(self, path: Path, dim: int) -> None:
        self.dim = dim
        self.db = Database(path)
        self._lock, self._sql = self.db.lock, self.db.connection

    def close(self) -> None:
        self.db.close()

    # -- writes ------------------------------------------------------------------------------

    def upsert(self, items: Sequence[NewItem], next_vectors: np.ndarray | None = None) -> Written:
        """Stores `items` in one transaction, replacing those whose id exists, with their
        next-version vectors `next_vectors` (n, next dim) if given (while re-indexing)."""
        written = Written([], [], 0, [])
        with self._lock, self.db.transaction():
            for i, item in enumerate(items):
                old = self._sql.execute("SELECT row FROM items WHERE id = ?", (item.id,)).fetchone()
                if old:
                    self._remove(old[0], written)
                cursor = self._sql.execute(
                    "INSERT INTO items (id, vector, metadata, source_kind, source) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (item.id, blob(item.vector), item.metadata, item.source_kind, item.source),
                )
                row = int(cursor.lastrowid or 0)
                self._sql.execute("INSERT INTO log (op, row) VALUES ('add', ?)", (row,))
                written.added.append(row)
                if next_vectors is not None:
                    self._sql.execute(
                        "INSERT INTO next_vectors (row, vector) VALUES (?, ?)",
                        (row, blob(next_vectors[i])),
                    )
            return written._replace(seq=self._seq())

    def delete(self, ids: Sequence[str]) -> Written:
        """Removes the items with these ids."""
        written = Written([], [], 0, [])
        with self._lock, self.db.transaction():
            rows: list[int] = []
            for chunk in chunks(list(dict.fromkeys(ids))):
                marks = ",".join("?" * len(chunk))
                found = self._sql.execute(f"SELECT row FROM items WHERE id IN ({marks})", chunk)
                rows.extend(r[0] for r in found)
            for row in rows:
                self._remove(row, written)
            return written._replace(seq=self._seq())

    def _remove(self, row: int, written: Written) -> None:
        self._sql.execute("DELETE FROM items WHERE row = ?", (row,))
        self._sql.execute("INSERT INTO log (op, row) VALUES ('remove', ?)", (row,))
        written.removed.append(row)
        if self._sql.execute("DELETE FROM next_vectors WHERE row = ?", (row,)).rowcount:
            written.removed_next.append(row)

    def prune_log(self, upto: int) -> None:
        """Forgets log entries a durable snapshot already holds."""
        with self._lock:
            self._sql.execute("DELETE FROM log WHERE seq <= ?", (upto,))

    # -- reads -------------------------------------------------------------------------------

    def seq(self) -> int:
        with self._lock:
            return self._seq()

    def count(self) -> int:
        with self._lock:
            return int(self._sql.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def count_kind(self, source_kind: str) -> int:
        with self._lock:
            sql = "SELECT COUNT(*) FROM items WHERE source_kind = ?"
            return int(self._sql.execute(sql, (source_kind,)).fetchone()[0])

    def log_after(self, seq: int) -> list[tuple[int, str, int]]:
        """(seq, op, row) written after `seq`, in order."""
        with self._lock:
            return self._sql.execute(
                "SELECT seq, op, row FROM log WHERE seq > ? ORDER BY seq", (seq,)
            ).fetchall()

    def by_ids(self, ids: Sequence[str]) -> dict[str, StoredRow]:
        found: dict[str, StoredRow] = {}
        with self._lock:
            for chunk in chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                for r in self._sql.execute(
                    f"SELECT row, id, vector, metadata, source_kind FROM items "
                    f"WHERE id IN ({marks})",
                    chunk,
                ):
                    found[r[1]] = self._stored(r)
        return found

    def by_rows(self, rows: Sequence[int]) -> dict[int, tuple[str, str]]:
        """row → (id, metadata) for the rows that still exist."""
        found: dict[int, tuple[str, str]] = {}
        with self._lock:
            for chunk in chunks([int(r) for r in rows]):
                marks = ",".join("?" * len(chunk))
                for row, id_, metadata in self._sql.execute(
                    f"SELECT row, id, metadata FROM items WHERE row IN ({marks})", chunk
                ):
                    found[row] = (id_, metadata)
        return found

    def vectors(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(rows present, their vectors (n, dim)) for the given rows."""
        found: list[tuple[int, bytes]] = []
        with self._lock:
            for chunk in chunks([int(r) for r in rows]):
                marks = ",".join("?" * len(chunk))
                found.extend(
                    self._sql.execute(
                        f"SELECT row, vector FROM items WHERE row IN ({marks})", chunk
                    ).fetchall()
                )
        return matrix(found, self.dim)

    def scan(self, batch: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (rows, vectors) of the collection, in row order, `batch` at a time."""
        return self.db.scan("items", self.dim, batch)

    def matching(self, filter_: dict[str, Any]) -> np.ndarray:
        """Rows whose metadata match `filter_` (key → value, or key → {"in": [values]})."""
        clauses, params = [], []
        for key, values in filter_terms(filter_):
            path = "$." + json.dumps(key)
            ors = []
            for value in values:
                if value is None:
                    ors.append("json_type(metadata, ?) = 'null'")
                    params.append(path)
                else:
                    ors.append("(json_extract(metadata, ?) = ? AND json_type(metadata, ?) = ?)")
                    params.extend([path, value, path, _json_type(value)])
            clauses.append("(" + " OR ".join(ors) + ")")
        sql = "SELECT row FROM items" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        with self._lock:
            return np.array([r[0] for r in self._sql.execute(sql, params)], dtype=np.int64)

    def sources(self, ids: Sequence[str]) -> dict[str, tuple[str, bytes | None]]:
        """id → (source kind, source) for re-embedding."""
        found: dict[str, tuple[str, bytes | None]] = {}
        with self._lock:
            for chunk in chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                for id_, kind, source in self._sql.execute(
                    f"SELECT id, source_kind, source FROM items WHERE id IN ({marks})", chunk
                ):
                    found[id_] = (kind, source)
        return found

    # -- helpers -----------------------------------------------------------------------------

    def _seq(self) -> int:
        row = self._sql.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
        return int(row[0]) if row else 0

    def _stored(self, r: tuple) -> StoredRow:
        return StoredRow(r[0], r[1], np.frombuffer(r[2], "<f4").copy(), r[3], r[4])


def filter_terms(filter_: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    """A metadata filter (key → value, or key → {"in": [values]}; every key must match) as
    (key, the scalar values any of which it may hold); InvalidInput names a malformed term."""
    terms = []
    for key, want in filter_.items():
        if isinstance(want, dict):
            values = want.get("in")
            if set(want) != {"in"} or not isinstance(values, list) or not values:
                raise InvalidInput(
                    f'filter on {key!r}: use a value or {{"in": [values]}}, got {want}'
                )
        else:
            values = [want]
        for value in values:
            if isinstance(value, (dict, list)):
                raise InvalidInput(f"filter on {key!r}: values must be scalars")
        terms.append((str(key), values))
    return terms


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "real"
    return "text"
