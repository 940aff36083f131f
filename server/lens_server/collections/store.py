"""The source of truth of a collection: one SQLite database in WAL mode.

`items` holds every live item under its row number (the id FAISS knows it by), with its
vector, metadata and source (image bytes or text, kept so the collection can be re-embedded).
An upsert of an existing id deletes the old row and inserts a new one, so a row number is
never reused. `log` records every row added or removed, in write order (`seq`); the FAISS
index is a snapshot up to some `seq` plus the log after it. Commits are synchronous
(`synchronous=FULL`): once `upsert` returns, the items survive a crash or a power cut.

While the collection is re-indexed with another model version, `next_vectors` holds that
version's vector of every live row re-embedded so far (never of a removed row), and `meta`
the target (`next`); the swap replaces every item's vector by its next one and records the
version the vectors now come from (`current`) in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lens_server.errors import InvalidInput

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
CREATE TABLE IF NOT EXISTS next_vectors (
    row INTEGER PRIMARY KEY,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
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

    def upsert(self, items: Sequence[NewItem], next_vectors: np.ndarray | None = None) -> Written:
        """Stores `items` in one transaction, replacing those whose id exists, with their
        next-version vectors `next_vectors` (n, next dim) if given (while re-indexing)."""
        written = Written([], [], 0, [])
        with self._lock, self._transaction():
            for i, item in enumerate(items):
                old = self._db.execute("SELECT row FROM items WHERE id = ?", (item.id,)).fetchone()
                if old:
                    self._remove(old[0], written)
                cursor = self._db.execute(
                    "INSERT INTO items (id, vector, metadata, source_kind, source) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (item.id, _blob(item.vector), item.metadata, item.source_kind, item.source),
                )
                row = int(cursor.lastrowid or 0)
                self._db.execute("INSERT INTO log (op, row) VALUES ('add', ?)", (row,))
                written.added.append(row)
                if next_vectors is not None:
                    self._db.execute(
                        "INSERT INTO next_vectors (row, vector) VALUES (?, ?)",
                        (row, _blob(next_vectors[i])),
                    )
            return written._replace(seq=self._seq())

    def delete(self, ids: Sequence[str]) -> Written:
        """Removes the items with these ids."""
        written = Written([], [], 0, [])
        with self._lock, self._transaction():
            rows: list[int] = []
            for chunk in _chunks(list(dict.fromkeys(ids))):
                marks = ",".join("?" * len(chunk))
                found = self._db.execute(f"SELECT row FROM items WHERE id IN ({marks})", chunk)
                rows.extend(r[0] for r in found)
            for row in rows:
                self._remove(row, written)
            return written._replace(seq=self._seq())

    def _remove(self, row: int, written: Written) -> None:
        self._db.execute("DELETE FROM items WHERE row = ?", (row,))
        self._db.execute("INSERT INTO log (op, row) VALUES ('remove', ?)", (row,))
        written.removed.append(row)
        if self._db.execute("DELETE FROM next_vectors WHERE row = ?", (row,)).rowcount:
            written.removed_next.append(row)

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
        return _matrix(found, self.dim)

    def scan(self, batch: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (rows, vectors) of the collection, in row order, `batch` at a time."""
        return self._scan("items", self.dim, batch)

    def _scan(self, table: str, dim: int, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = 0
        while True:
            with self._lock:
                found = self._db.execute(
                    f"SELECT row, vector FROM {table} WHERE row > ? ORDER BY row LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not found:
                return
            last = found[-1][0]
            yield _matrix(found, dim)

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

    # -- the next model version (re-indexing) ------------------------------------------------

    def meta(self, key: str) -> str | None:
        """`current`: the model version of the vectors (once a re-index swapped); `next`: the
        re-index target."""
        with self._lock:
            found = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    def begin_next(self, target: str) -> None:
        """Records the re-index target, forgetting every next-version vector."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM next_vectors")
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('next', ?)", (target,)
            )

    def cancel_next(self) -> None:
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM next_vectors")
            self._db.execute("DELETE FROM meta WHERE key = 'next'")

    def progress_next(self) -> tuple[int, int]:
        """(live rows that have a next-version vector, live rows)."""
        with self._lock:
            return self._db.execute(
                "SELECT (SELECT COUNT(*) FROM next_vectors), (SELECT COUNT(*) FROM items)"
            ).fetchone()

    def count_kind(self, source_kind: str) -> int:
        with self._lock:
            sql = "SELECT COUNT(*) FROM items WHERE source_kind = ?"
            return int(self._db.execute(sql, (source_kind,)).fetchone()[0])

    def pending_next(self, after: int, limit: int) -> list[tuple[int, str, bytes | None]]:
        """(row, source kind, source) of live rows after `after` lacking a next-version vector,
        in row order."""
        with self._lock:
            return self._db.execute(
                "SELECT items.row, items.source_kind, items.source FROM items "
                "LEFT JOIN next_vectors ON next_vectors.row = items.row "
                "WHERE items.row > ? AND next_vectors.row IS NULL ORDER BY items.row LIMIT ?",
                (after, limit),
            ).fetchall()

    def put_next(self, rows: np.ndarray, vectors: np.ndarray) -> list[int]:
        """Stores next-version `vectors` (n, next dim) of `rows` that are live and lack one;
        returns the positions in `rows` stored."""
        stored: list[int] = []
        with self._lock, self._transaction():
            for i, row in enumerate(rows.tolist()):
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO next_vectors (row, vector) "
                    "SELECT row, ? FROM items WHERE row = ?",
                    (_blob(vectors[i]), row),
                )
                if cursor.rowcount:
                    stored.append(i)
        return stored

    def scan_next(self, dim: int, batch: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (rows, next-version vectors (n, dim)), in row order."""
        return self._scan("next_vectors", dim, batch)

    def swap_next(self, current: str, dim: int, before_commit: Callable[[], None]) -> bool:
        """In one transaction: every item's vector becomes its next-version one (of `dim`), the
        next ones are dropped, `current` is recorded; `before_commit` runs last (an error in it
        rolls back). False, changing nothing, if a live row lacks a next-version vector."""
        with self._lock:
            with self._transaction():
                missing = self._db.execute(
                    "SELECT 1 FROM items WHERE row NOT IN (SELECT row FROM next_vectors) LIMIT 1"
                ).fetchone()
                if missing:
                    return False
                self._db.execute(
                    "UPDATE items SET vector = "
                    "(SELECT vector FROM next_vectors WHERE next_vectors.row = items.row)"
                )
                self._db.execute("DELETE FROM next_vectors")
                self._db.execute("DELETE FROM meta WHERE key = 'next'")
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('current', ?)", (current,)
                )
                before_commit()
            self.dim = dim
        return True

    # -- helpers -----------------------------------------------------------------------------

    def _seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
        return int(row[0]) if row else 0

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _stored(self, r: tuple) -> StoredRow:
        return StoredRow(r[0], r[1], np.frombuffer(r[2], "<f4").copy(), r[3], r[4])


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if kind else "COMMIT")


def _matrix(found: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.array([r for r, _ in found], dtype=np.int64)
    if not found:
        return rows, np.empty((0, dim), np.float32)
    data = b"".join(v for _, v in found)
    return rows, np.frombuffer(data, "<f4").reshape(len(found), dim).copy()


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
