"""How a collection's items are Milvus rows: the row of an item (its source base64 in
VARCHAR pieces), lens's metadata filter as a Milvus boolean expression on the JSON field, and
the view of the rows that the browse pages read as a store."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lens_server.collections.held import EngineStoreView
from lens_server.collections.milvus_engine import SOURCE_PIECE
from lens_server.collections.store import NewItem, filter_terms

if TYPE_CHECKING:
    from lens_server.collections.milvus import MilvusCollection

BATCH = 1000


class StoreView(EngineStoreView):
    """What the browse pages read of a collection's store (`ItemStore`'s names)."""

    _c: MilvusCollection

    def sources(self, ids: Sequence[str]) -> dict[str, tuple[str, bytes | None]]:
        client = self._c.engine.client()
        with self._c.engine.errors(f"reading collection {self._c.spec.name}"):
            rows = client.query(
                self._c._table, ids=list(ids), output_fields=["id", "source_kind", "source"]
            )
        return {r["id"]: (r["source_kind"], source_of(r["source"])) for r in rows}

    def scan(self, batch: int = BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, vectors) in batches; rows number the items in scan order, and `by_rows`
        names those of the latest scan."""
        self._scanned: list[str] = []
        for found in self._c._scan(self._c._table, ["id", "vector"]):
            start = len(self._scanned)
            self._scanned.extend(r["id"] for r in found)
            rows = np.arange(start, len(self._scanned), dtype=np.int64)
            yield rows, np.asarray([r["vector"] for r in found], np.float32)

    def by_rows(self, rows: Sequence[int]) -> dict[int, tuple[str, str]]:
        """row → (id, metadata) of rows of the latest `scan` still in the collection."""
        scanned = getattr(self, "_scanned", [])
        wanted = {scanned[r]: r for r in rows if 0 <= r < len(scanned)}
        found = self._c._by_ids(list(wanted))
        return {wanted[i]: (i, row.metadata) for i, row in found.items()}


def milvus_filter(filter_: dict[str, Any]) -> str:
    """lens's metadata filter (key: value, or key: {"in": [values]}, all keys to match) as a
    Milvus boolean expression on the `metadata` JSON field."""
    clauses = []
    for key, values in filter_terms(filter_):
        field = f"metadata[{json.dumps(key)}]"
        ors = []
        for value in values:
            if value is None:
                ors.append(f"{field} is null")
            else:
                ors.append(f"{field} == {json.dumps(value)}")
        clauses.append("(" + " or ".join(ors) + ")")
    return " and ".join(clauses)


def item_row(item: NewItem, vector: np.ndarray, written: int) -> dict[str, Any]:
    encoded = base64.b64encode(item.source).decode() if item.source is not None else None
    pieces = (
        []
        if encoded is None
        else [encoded[i : i + SOURCE_PIECE] for i in range(0, len(encoded), SOURCE_PIECE)] or [""]
    )
    return {
        "id": item.id,
        "vector": vector.tolist(),
        "metadata": json.loads(item.metadata or "{}"),
        "source_kind": item.source_kind,
        "source": pieces,
        "written": written,
    }


def source_of(pieces: list[str] | None) -> bytes | None:
    return base64.b64decode("".join(pieces)) if pieces else None
