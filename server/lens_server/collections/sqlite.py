"""A collection's SQLite database: its schema, its one connection, and vectors as blobs.

One database in WAL mode per collection, holding its items and write log (`store.ItemStore`)
and, while it is re-indexed, the next model version's vectors (`next_vectors.NextVectors`).
Both use the same connection under the same lock, so one transaction can span their tables.
Commits are synchronous (`synchronous=FULL`): what a committed transaction wrote survives a
crash or a power cut.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

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

# SQLite limits host parameters per statement; look rows up in chunks.
CHUNK = 900


class Database:
    """The connection and the lock around every use of it (SQLite connections are not safe to
    share between threads unguarded)."""

    def __init__(self, path: Path) -> None:
        self.lock = threading.Lock()
        self.connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.executescript(SCHEMA)

    def transaction(self) -> Transaction:
        """`with db.lock, db.transaction():` around statements that commit together."""
        return Transaction(self.connection)

    def scan(
        self, table: str, dim: int, batch: int = 65_536
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (rows (n,), vectors (n, dim)) of `table`, in row order, `batch` at a time; the
        lock is held for each batch only."""
        last = 0
        while True:
            with self.lock:
                found = self.connection.execute(
                    f"SELECT row, vector FROM {table} WHERE row > ? ORDER BY row LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not found:
                return
            last = found[-1][0]
            yield matrix(found, dim)

    def close(self) -> None:
        with self.lock:
            self.connection.close()


class Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if kind else "COMMIT")


def matrix(found: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n,) int64, vectors (n, dim) float32) of (row, blob) pairs."""
    rows = np.array([r for r, _ in found], dtype=np.int64)
    if not found:
        return rows, np.empty((0, dim), np.float32)
    data = b"".join(v for _, v in found)
    return rows, np.frombuffer(data, "<f4").reshape(len(found), dim).copy()


def blob(vector: np.ndarray) -> bytes:
    """A (dim,) vector as little-endian float32 bytes."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def chunks(values: list) -> Iterator[list]:
    for i in range(0, len(values), CHUNK):
        yield values[i : i + CHUNK]
