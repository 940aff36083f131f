"""The source of truth of a collection: one SQLite database in WAL mode.

`items` holds every live item under its row number (the id FAISS knows it by), with its
vector, metadata and source (image bytes or text, kept so the collection can be re-embedded).
An upsert of an existing id deletes the old row and inserts a new one, so a row number is
never reused. `log` records every row added or removed, in write order (`seq`); the FAISS
index is a snapshot up to some `seq` plus the log after it. Commits are synchronous
(`synchronous=FULL`): once `upsert` returns, the items survive a crash or a power cut.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import InvalidInput

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    vector BLOB NOT NULL,
    metadata TEXT NOT NULL,
    source_kind TEXT NOT NULL,
    source BLOB
);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    row INTEGER NOT NULL
);
"""

# SQLite limits host parameters per statement; look ids up in chunks.
_CHUNK = 900


@dataclass(frozen=True)
class NewItem:
    """An item ready to store: its vector (dim,) float32 and where it came from."""

    id: str
    vector: np.ndarray
    metadata: str
    source_kind: str  # "image", "text" or "vector"
    source: bytes | None


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
    """The SQLite database of one collection. Thread-safe: one connection, one lock."""

    def __init__(self, path: Path, dim: int) -> None:
        self.dim = dim
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes ------------------------------------------------------------------------------

    def upsert(self, items: Sequence[NewItem]) -> tuple[list[int], list[int], int]:
        """Stores `items` in one transaction, replacing those whose id exists.

        Returns (rows removed, rows added, seq after the write).
        """
        removed: list[int] = []
        added: list[int] = []
        with self._lock, self._transaction():
            for item in items:
                old = self._db.execute("SELECT row FROM items WHERE id = ?", (item.id,)).fetchone()
                if old:
                    self._db.execute("DELETE FROM items WHERE row = ?", old)
                    self._db.execute("INSERT INTO log (op, row) VALUES ('remove', ?)", old)
                    removed.append(old[0])
                cursor = self._db.execute(
                    "INSERT INTO items (id, vector, metadata, source_kind, source) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (item.id, _blob(item.vector), item.metadata, item.source_kind, item.source),
                )
                row = int(cursor.lastrowid or 0)
                self._db.execute("INSERT INTO log (op, row) VALUES ('add', ?)", (row,))
                added.append(row)
            seq = self._seq()
        return removed, added, seq

    def delete(self, ids: Sequence[str]) -> tuple[list[int], int]:
        """Removes the items with these ids; returns (rows removed, seq after the write)."""
        removed: list[int] = []
        with self._lock, self._transaction():
            for chunk in _chunks(list(dict.fromkeys(ids))):
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT row FROM items WHERE id IN ({marks})", chunk
                ).fetchall()
                removed.extend(r[0] for r in rows)
            for row in removed:
                self._db.execute("DELETE FROM items WHERE row = ?", (row,))
                self._db.execute("INSERT INTO log (op, row) VALUES ('remove', ?)", (row,))
            seq = self._seq()
        return removed, seq

    def prune_log(self, upto: int) -> None:
        """Forgets log entries a durable snapshot already holds."""
        with self._lock:
            self._db.execute("DELETE FROM log WHERE seq <= ?", (upto,))

    # -- reads -------------------------------------------------------------------------------

    def seq(self) -> int:
        with self._lock:
            return self._seq()

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def log_after(self, seq: int) -> list[tuple[int, str, int]]:
        """(seq, op, row) written after `seq`, in order."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, op, row FROM log WHERE seq > ? ORDER BY seq", (seq,)
            ).fetchall()

    def by_ids(self, ids: Sequence[str]) -> dict[str, StoredRow]:
        found: dict[str, StoredRow] = {}
        with self._lock:
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                for r in self._db.execute(
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
            for chunk in _chunks([int(r) for r in rows]):
                marks = ",".join("?" * len(chunk))
                for row, id_, metadata in self._db.execute(
                    f"SELECT row, id, metadata FROM items WHERE row IN ({marks})", chunk
                ):
                    found[row] = (id_, metadata)
        return found

    def vectors(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(rows present, their vectors (n, dim)) for the given rows."""
        found: list[tuple[int, bytes]] = []
        with self._lock:
            for chunk in _chunks([int(r) for r in rows]):
                marks = ",".join("?" * len(chunk))
                found.extend(
                    self._db.execute(
                        f"SELECT row, vector FROM items WHERE row IN ({marks})", chunk
                    ).fetchall()
                )
        return self._matrix(found)

    def scan(self, batch: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (rows, vectors) of the collection, in row order, `batch` at a time."""
        last = 0
        while True:
            with self._lock:
                found = self._db.execute(
                    "SELECT row, vector FROM items WHERE row > ? ORDER BY row LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not found:
                return
            last = found[-1][0]
            yield self._matrix(found)

    def matching(self, filter_: dict[str, Any]) -> np.ndarray:
        """Rows whose metadata match `filter_` (key → value, or key → {"in": [values]})."""
        clauses, params = [], []
        for key, want in filter_.items():
            path = "$." + json.dumps(key)
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
            return np.array([r[0] for r in self._db.execute(sql, params)], dtype=np.int64)

    def sources(self, ids: Sequence[str]) -> dict[str, tuple[str, bytes | None]]:
        """id → (source kind, source) for re-embedding."""
        found: dict[str, tuple[str, bytes | None]] = {}
        with self._lock:
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                for id_, kind, source in self._db.execute(
                    f"SELECT id, source_kind, source FROM items WHERE id IN ({marks})", chunk
                ):
                    found[id_] = (kind, source)
        return found

    # -- helpers -----------------------------------------------------------------------------

    def _seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
        return int(row[0]) if row else 0

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _stored(self, r: tuple) -> StoredRow:
        return StoredRow(r[0], r[1], np.frombuffer(r[2], "<f4").copy(), r[3], r[4])

    def _matrix(self, found: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.array([r for r, _ in found], dtype=np.int64)
        if not found:
            return rows, np.empty((0, self.dim), np.float32)
        data = b"".join(v for _, v in found)
        return rows, np.frombuffer(data, "<f4").reshape(len(found), self.dim).copy()


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if kind else "COMMIT")


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _chunks(values: list) -> Iterator[list]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "real"
    return "text"
