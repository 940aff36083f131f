"""One collection: its SQLite store, its FAISS index, snapshots, recovery, rebuilds, and the
re-index with another model version.

Writes go to SQLite first (durable when `upsert` returns), then to the in-memory index, both
under one write lock so the index applies them in log order. Snapshots (`snapshots`) hold the
index with the log sequence number it holds; opening a collection loads the newest and
replays the log after it, so a crash at any point loses nothing acknowledged and duplicates
nothing. An index the collection has outgrown is rebuilt beside the serving one (`building`).
A re-index (`begin_reindex` … `finish_reindex`) is the `shadow.Reindexer`'s, which this class
calls under its locks. All methods block: the server calls them from worker threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lens_server.collections import building
from lens_server.collections.faiss_index import VectorIndex
from lens_server.collections.shadow import Reindexer, ReindexState
from lens_server.collections.snapshots import Snapshots
from lens_server.collections.spec import (
    SPEC,
    CollectionSpec,
    ModelVersion,
    VersionChanged,
    check_queries,
)
from lens_server.collections.store import ItemStore, NewItem, StoredRow
from lens_server.errors import InvalidInput

__all__ = ["DATABASE", "SPEC", "Collection", "CollectionSpec", "Hit", "VersionChanged"]

log = logging.getLogger(__name__)

DATABASE = "items.sqlite"


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: str


class Collection:
    # A snapshot is written after this many logged writes (and at close).
    SNAPSHOT_EVERY = 20_000
    # HNSW is rebuilt when tombstones exceed this share of its vectors.
    MAX_TOMBSTONES = 0.2

    def __init__(self, folder: Path, spec: CollectionSpec) -> None:
        self.folder = folder
        self.store = ItemStore(folder / DATABASE, spec.dim)
        self._reindexer = Reindexer(self.store)
        # The database's model version wins over `spec` (a crash during a swap).
        self.spec = self._reindexer.restore(spec, folder)
        self._write = threading.Lock()  # store write + index apply, in log order
        self._read = threading.Lock()  # the index itself (FAISS is not thread-safe to mutate)
        self._deciding = threading.Lock()  # starting a rebuild vs. swapping in a re-index
        self._rebuilding: threading.Thread | None = None
        self._snapshotting = threading.Lock()
        self._snapshots = Snapshots(folder)
        self.index = self._recover()

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, spec: CollectionSpec) -> Collection:
        folder.mkdir(parents=True)
        spec.save(folder)
        return cls(folder, spec)

    @classmethod
    def open(cls, folder: Path) -> Collection:
        return cls(folder, CollectionSpec.load(folder))

    def close(self) -> None:
        if self._rebuilding:
            self._rebuilding.join()
        self.snapshot()
        self.store.close()

    def _recover(self) -> VectorIndex:
        """The newest snapshot plus the log after it; a fresh build if there is none."""
        data = self._snapshots.newest()
        if data is None:
            return building.build(self.store, self.spec, self.spec.index.target(self.store.count()))
        index = VectorIndex.load(data, self.spec.index, metric=self.spec.metric)
        index.vectors_of = self.store.vectors
        seq = self._snapshots.seq
        index.tombstones = building.replay(self.store, index, seq, set(index.rows().tolist()))
        log.info(
            "collection %s: snapshot at seq %d + %d replayed writes",
            self.spec.name,
            seq,
            self.store.seq() - seq,
        )
        return index

    # -- writes ------------------------------------------------------------------------------

    def upsert(
        self,
        items: Sequence[NewItem],
        next_vectors: tuple[int, np.ndarray] | None = None,
        version: int | None = None,
    ) -> int:
        """Stores `items` (durable on return) and indexes them; the seq after the write.

        `version`: the model version the items' vectors come from, if known. While
        re-indexing, `next_vectors` (the target version, the items' (n, dim) vectors from it)
        keep the shadow in step (see `Reindexer.route`).
        """
        for i, item in enumerate(items):
            if not item.id:
                raise InvalidInput(f"item {i}: id is empty")
        vectors = self.spec.prepare(np.stack([item.vector for item in items]))
        with self._write:
            vectors, shadow_vectors = self._reindexer.route(
                self.spec, items, vectors, version, next_vectors
            )
            written = self.store.upsert(
                [
                    NewItem(it.id, v, it.metadata, it.source_kind, it.source)
                    for it, v in zip(items, vectors, strict=True)
                ],
                shadow_vectors,
            )
            kept = written.kept()
            with self._read:
                self.index.remove(written.not_added(written.removed))
                self.index.add(np.array(written.added, np.int64)[kept], vectors[kept])
            self._reindexer.apply(written, shadow_vectors)
        self._after_write(written.seq)
        return written.seq

    def delete(self, ids: Sequence[str]) -> int:
        with self._write:
            written = self.store.delete(ids)
            with self._read:
                self.index.remove(written.removed)
            self._reindexer.apply(written, None)
        self._after_write(written.seq)
        return len(written.removed)

    def _after_write(self, seq: int) -> None:
        due = seq - self._snapshots.seq >= self.SNAPSHOT_EVERY
        if due and not self._rebuilding and not self._snapshotting.locked():
            threading.Thread(
                target=self.snapshot, name=f"snapshot-{self.spec.name}", daemon=True
            ).start()
        self._maybe_rebuild()

    # -- snapshots and rebuilds --------------------------------------------------------------

    def snapshot(self) -> None:
        """Writes the index and the seq it holds, atomically; prunes the log before it."""
        with self._snapshotting:
            self._snapshot()

    def _snapshot(self) -> None:
        with self._write, self._read:
            seq = self.store.seq()
            if seq == self._snapshots.seq and self._snapshots.paths():
                return
            data = self.index.serialize()
        self._snapshots.write(data, seq)
        if not self._rebuilding:
            self.store.prune_log(seq)

    def _maybe_rebuild(self) -> None:
        """Starts a background rebuild when the index no longer fits the collection (see
        `building.outgrown`)."""
        with self._deciding:  # not while a re-index swaps
            if self._rebuilding:
                return
            kind = building.outgrown(self.spec.index, self.index, self.MAX_TOMBSTONES)
            if kind is not None:
                self._rebuilding = threading.Thread(
                    target=self._rebuild,
                    args=(kind,),
                    name=f"rebuild-{self.spec.name}",
                    daemon=True,
                )
                self._rebuilding.start()

    def _rebuild(self, kind: str) -> None:
        """Builds a new index beside the serving one, catches up with the log, swaps."""
        try:
            start, spec = self.store.seq(), self.spec
            fresh = building.build(self.store, spec, kind)
            with self._write:
                if self.spec is not spec:  # a re-index swapped in other vectors meanwhile
                    log.info("collection %s: rebuild as %s superseded", spec.name, kind)
                    return
                present = set(fresh.rows().tolist())
                fresh.tombstones = building.replay(self.store, fresh, start, present)
                with self._read:
                    self.index = fresh
            log.info(
                "collection %s rebuilt as %s (%d items)", self.spec.name, fresh.kind, fresh.live
            )
        except Exception:
            log.exception("collection %s: rebuild as %s failed", self.spec.name, kind)
        finally:
            self._rebuilding = None
        self.snapshot()

    # -- re-indexing with another model version ----------------------------------------------

    def begin_reindex(self, model: str, version: int, dim: int) -> None:
        """Starts re-embedding every item with `model` `version` (vectors of `dim`) into a
        shadow; resumes when that target is in progress already, starts over when another is.

        FailedPrecondition if items were given as raw vectors (they have no source to embed);
        InvalidInput for a collection of vectors only.
        """
        if not self.spec.model:
            raise InvalidInput(f"collection {self.spec.name} holds vectors only: it has no model")
        target = ModelVersion(model, version, dim)
        with self._write:
            self._reindexer.begin(self.spec, target)

    def cancel_reindex(self) -> None:
        """Drops the re-index in progress, if any; the collection stays as it is."""
        with self._write:
            self._reindexer.cancel()

    @property
    def reindexing(self) -> ReindexState | None:
        return self._reindexer.state()

    @property
    def reindex_target(self) -> ModelVersion | None:
        """The version a re-index in progress embeds with (no counting: cheap)."""
        return self._reindexer.target

    def pending_sources(self, limit: int, after: int = 0) -> list[tuple[int, str, bytes | None]]:
        """(row, source kind, source) of up to `limit` live rows after row `after` that lack a
        vector of the target version, in row order; empty when none (or no re-index).

        A row stays pending until `put_reindexed` stores it: a driver that embeds several
        batches at once passes the last row it has in flight as `after`.
        """
        return self._reindexer.pending(limit, after)

    def put_reindexed(
        self, rows: np.ndarray, vectors: np.ndarray, version: int | None = None
    ) -> int:
        """Stores the target version's `vectors` (n, dim) of `rows` (n,) and indexes them in
        the shadow; rows removed or replaced meanwhile are skipped (rows are never reused), as
        is everything when no re-index (or one to another `version`) is in progress. Returns
        how many were stored."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(rows):
            raise InvalidInput(
                f"{len(rows)} rows need ({len(rows)}, dim) vectors, got {vectors.shape}"
            )
        vectors = self.spec.prepare(vectors)
        with self._write:
            return self._reindexer.put(rows, vectors, version)

    def finish_reindex(self) -> bool:
        """Swaps the shadow in, atomically and crash-safely, once every live row has a vector
        of the target version: True when no re-index remains (swapped now, or none was in
        progress); False, changing nothing, while a row lacks one or a rebuild runs."""
        with self._snapshotting:
            with self._deciding, self._write:
                if self._reindexer.target is None:
                    return True
                if self._rebuilding is not None:
                    return False
                # The old vectors' snapshots go before the swap commits.
                swapped = self._reindexer.swap(self.spec, self._snapshots.drop)
                if swapped is None:
                    return False
                spec, index = swapped
                with self._read:
                    self.index, self.spec = index, spec
                self._reindexer.end()
                try:
                    spec.save(self.folder)
                except OSError:  # the database holds the version; `open` rewrites the spec
                    log.exception("collection %s: could not save its spec", spec.name)
            self._snapshot()
        log.info("collection %s: now at %s version %d", spec.name, spec.model, spec.version)
        self._maybe_rebuild()
        return True

    # -- reads -------------------------------------------------------------------------------

    def get(self, ids: Sequence[str]) -> list[StoredRow]:
        found = self.store.by_ids(ids)
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    def vectors_of(self, ids: Sequence[str]) -> np.ndarray:
        found = self.store.by_ids(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise InvalidInput(f"query id {missing[0]!r} is not in collection {self.spec.name}")
        return np.stack([found[i].vector for i in ids])

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filter_: dict[str, Any] | None = None,
        exact: bool = False,
        version: int | None = None,
    ) -> list[list[Hit]]:
        """The k nearest items of each query (n, dim), closest first. `version`: the model
        version the queries come from (VersionChanged if the collection swapped meanwhile)."""
        queries = self.spec.prepare(queries)
        allowed = self.store.matching(filter_) if filter_ else None
        if allowed is not None and not len(allowed):
            return [[] for _ in queries]
        if exact:
            scores, rows = self._exact(queries, k, allowed, version)
        else:
            with self._read:
                check_queries(self.spec, queries, version)
                scores, rows = self.index.search(queries, k, allowed)
        found = self.store.by_rows(np.unique(rows[rows >= 0]).tolist())
        return [
            [
                Hit(found[r][0], float(s), found[r][1])
                for s, r in zip(score_row, row_row, strict=True)
                if r in found
            ]
            for score_row, row_row in zip(scores, rows, strict=True)
        ]

    def _exact(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None, version: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over every stored vector, streamed from SQLite (O(N) per call)."""
        spec = self.spec
        check_queries(spec, queries, version)
        empty = np.empty((0, spec.dim), np.float32)
        flat = VectorIndex.build("flat", spec.dim, spec.metric, spec.index, empty)
        keep = None if allowed is None else set(allowed.tolist())
        for rows, vectors in self.store.scan():
            if keep is not None:
                mask = np.fromiter((r in keep for r in rows.tolist()), bool, len(rows))
                rows, vectors = rows[mask], vectors[mask]
            if vectors.shape[1] != spec.dim:
                raise VersionChanged(f"collection {spec.name} swapped model versions meanwhile")
            flat.add(rows, vectors)
        if self.spec is not spec:  # swapped during the scan: some vectors may be new ones
            raise VersionChanged(f"collection {spec.name} swapped model versions meanwhile")
        return flat.search(queries, k)

    def duplicates(self, threshold: float, max_pairs: int) -> list[tuple[str, str, float]]:
        """Pairs of distinct items at least `threshold` similar, most similar first."""
        l2 = self.spec.metric == "l2"
        pairs: list[tuple[float, int, int]] = []
        for rows, vectors in self.store.scan(batch=4096):
            with self._read:
                if vectors.shape[1] != self.spec.dim:
                    raise VersionChanged(f"collection {self.spec.name} swapped versions meanwhile")
                limits, scores, hits = self.index.range_search(vectors, threshold)
            for i, row in enumerate(rows.tolist()):
                for s, other in zip(
                    scores[limits[i] : limits[i + 1]], hits[limits[i] : limits[i + 1]], strict=True
                ):
                    if other > row and other not in self.index.tombstones:
                        pairs.append((float(s), row, int(other)))
        pairs.sort(key=lambda p: p[0], reverse=not l2)
        pairs = pairs[:max_pairs]
        names = self.store.by_rows(sorted({r for _, a, b in pairs for r in (a, b)}))
        return [(names[a][0], names[b][0], s) for s, a, b in pairs if a in names and b in names]

    def describe(self) -> dict[str, Any]:
        with self._read:
            kind, memory = self.index.kind, self.index.memory_bytes()
            storage = self.index.storage
        return {
            "count": self.store.count(),
            "built_type": kind,
            "built_storage": storage,
            "memory_bytes": memory,
            "snapshot_seq": self._snapshots.seq,
            "snapshot_time": self._snapshots.time,
            "seq": self.store.seq(),
            "rebuilding": self._rebuilding is not None,
            "reindex": self.reindexing,
        }
