"""The next model version's vectors of a collection's items, while it is re-indexed.

`next_vectors` holds the target version's vector of every live row re-embedded so far (never
of a removed row: `ItemStore` deletes it with its row), and `meta` the target (`next`). The
swap replaces every item's vector by its next one and records the version the vectors now
come from (`current`) in one transaction. Both live in the items' database (`sqlite`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from lens_server.collections.spec import ModelVersion
from lens_server.collections.sqlite import blob
from lens_server.collections.store import ItemStore


class NextVectors:
    """The next-version vectors of `store`'s items; thread-safe (the store's lock)."""

    def __init__(self, store: ItemStore) -> None:
        self._store = store
        self._lock, self._sql = store.db.lock, store.db.connection

    def target(self) -> ModelVersion | None:
        """The version a re-index in progress embeds with; None when none is."""
        return self._meta("next")

    def current(self) -> ModelVersion | None:
        """The version the items' vectors come from, once a re-index swapped; None before."""
        return self._meta("current")

    def begin(self, target: ModelVersion) -> None:
        """Records the re-index target, forgetting every next-version vector."""
        with self._lock, self._store.db.transaction():
            self._sql.execute("DELETE FROM next_vectors")
            self._sql.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('next', ?)", (target.to_json(),)
            )

    def cancel(self) -> None:
        with self._lock, self._store.db.transaction():
            self._sql.execute("DELETE FROM next_vectors")
            self._sql.execute("DELETE FROM meta WHERE key = 'next'")

    def progress(self) -> tuple[int, int]:
        """(live rows that have a next-version vector, live rows)."""
        with self._lock:
            return self._sql.execute(
                "SELECT (SELECT COUNT(*) FROM next_vectors), (SELECT COUNT(*) FROM items)"
            ).fetchone()

    def pending(self, after: int, limit: int) -> list[tuple[int, str, bytes | None]]:
        """(row, source kind, source) of live rows after `after` lacking a next-version vector,
        in row order."""
        with self._lock:
            return self._sql.execute(
                "SELECT items.row, items.source_kind, items.source FROM items "
                "LEFT JOIN next_vectors ON next_vectors.row = items.row "
                "WHERE items.row > ? AND next_vectors.row IS NULL ORDER BY items.row LIMIT ?",
                (after, limit),
            ).fetchall()

    def put(self, rows: np.ndarray, vectors: np.ndarray) -> list[int]:
        """Stores next-version `vectors` (n, next dim) of `rows` (n,) that are live and lack
        one; returns the positions in `rows` stored."""
        stored: list[int] = []
        with self._lock, self._store.db.transaction():
            for i, row in enumerate(rows.tolist()):
                cursor = self._sql.execute(
                    "INSERT OR IGNORE INTO next_vectors (row, vector) "
                    "SELECT row, ? FROM items WHERE row = ?",
                    (blob(vectors[i]), row),
                )
                if cursor.rowcount:
                    stored.append(i)
        return stored

    def scan(self, dim: int, batch: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (rows, next-version vectors (n, dim)), in row order."""
        return self._store.db.scan("next_vectors", dim, batch)

    def swap(self, new: ModelVersion, before_commit: Callable[[], None]) -> bool:
        """In one transaction: every item's vector becomes its next-version one (of `new.dim`,
        which the store takes), the next ones are dropped, `new` is recorded as current;
        `before_commit` runs last (an error in it rolls back). False, changing nothing, if a
        live row lacks a next-version vector."""
        with self._lock:
            with self._store.db.transaction():
                missing = self._sql.execute(
                    "SELECT 1 FROM items WHERE row NOT IN (SELECT row FROM next_vectors) LIMIT 1"
                ).fetchone()
                if missing:
                    return False
                self._sql.execute(
                    "UPDATE items SET vector = "
                    "(SELECT vector FROM next_vectors WHERE next_vectors.row = items.row)"
                )
                self._sql.execute("DELETE FROM next_vectors")
                self._sql.execute("DELETE FROM meta WHERE key = 'next'")
                self._sql.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('current', ?)",
                    (new.to_json(),),
                )
                before_commit()
            self._store.dim = new.dim
        return True

    def _meta(self, key: str) -> ModelVersion | None:
        with self._lock:
            found = self._sql.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return ModelVersion.from_json(found[0]) if found else None
