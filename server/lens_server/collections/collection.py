"""One collection: its SQLite store, its FAISS index, snapshots, recovery and rebuilds.

Writes go to SQLite first (durable when `upsert` returns), then to the in-memory index, both
under one write lock so the index applies them in log order. Snapshots serialise the index
with the log sequence number it holds, to `index-<seq>.faiss` through a temporary file and a
rename; opening a collection loads the newest snapshot and replays the log after it, so a crash
at any point loses nothing acknowledged and duplicates nothing. Re-indexing with another
model version (`begin_reindex` … `finish_reindex`) is mixed in from `shadow`. All methods
block: the server calls them from worker threads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lens_server.collections.faiss_index import METRICS, IndexConfig, VectorIndex
from lens_server.collections.shadow import Reindexing, Shadow, VersionChanged, check_queries
from lens_server.collections.store import ItemStore, NewItem, StoredRow
from lens_server.errors import InvalidInput

log = logging.getLogger(__name__)

SPEC = "collection.json"
DATABASE = "items.sqlite"


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    dim: int
    metric: str = "cosine"
    model: str = ""  # empty: vectors only
    version: int = 0
    index: IndexConfig = field(default_factory=IndexConfig)
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InvalidInput(f"metric must be one of {', '.join(METRICS)}; got {self.metric!r}")
        if self.dim < 1:
            raise InvalidInput(f"dim must be >= 1, got {self.dim}")

    def save(self, folder: Path) -> None:
        tmp = folder / (SPEC + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(folder / SPEC)

    @classmethod
    def load(cls, folder: Path) -> CollectionSpec:
        raw = json.loads((folder / SPEC).read_text())
        return cls(**{**raw, "index": IndexConfig(**raw["index"])})


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: str


class Collection(Reindexing):
    # A snapshot is written after this many logged writes (and at close).
    SNAPSHOT_EVERY = 20_000
    # HNSW is rebuilt when tombstones exceed this share of its vectors.
    MAX_TOMBSTONES = 0.2

    def __init__(self, folder: Path, spec: CollectionSpec) -> None:
        self.folder = folder
        self.store = ItemStore(folder / DATABASE, spec.dim)
        self._shadow: Shadow | None = None
        self.spec = self._restore(spec)  # the database's model version wins (crash in a swap)
        self._write = threading.Lock()  # store write + index apply, in log order
        self._read = threading.Lock()  # the index itself (FAISS is not thread-safe to mutate)
        self._deciding = threading.Lock()  # starting a rebuild vs. swapping in a re-index
        self._rebuilding: threading.Thread | None = None
        self._snapshotting = threading.Lock()
        self.snapshot_seq, self.snapshot_time = 0, 0.0
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
        snapshots = sorted(self.folder.glob("index-*.faiss"), key=_snapshot_seq)
        if not snapshots:
            return self._build(self.spec.index.target(self.store.count()))
        newest = snapshots[-1]
        index = VectorIndex.load(np.fromfile(newest, dtype=np.uint8), self.spec.index)
        self.snapshot_seq, self.snapshot_time = _snapshot_seq(newest), newest.stat().st_mtime
        present = set(index.rows().tolist())
        index.tombstones = self._replay(index, self.snapshot_seq, present)
        log.info(
            "collection %s: snapshot at seq %d + %d replayed writes",
            self.spec.name,
            self.snapshot_seq,
            self.store.seq() - self.snapshot_seq,
        )
        return index

    def _replay(self, index: VectorIndex, after: int, present: set[int]) -> set[int]:
        """Applies the log after `after` to `index`, which holds the rows `present`.

        Row numbers are never reused, so the net effect of the tail is: remove the rows it
        removes that the index holds, add the rows it adds and does not remove. Returns the
        index's tombstones (HNSW keeps removed rows until it is rebuilt).
        """
        added: set[int] = set()
        removed: set[int] = set()
        for _, op, row in self.store.log_after(after):
            (added if op == "add" else removed).add(row)
        index.remove(sorted(removed & present))
        fresh = sorted(added - removed - present)
        for start in range(0, len(fresh), 65_536):
            rows, vectors = self.store.vectors(fresh[start : start + 65_536])
            index.add(rows, vectors)
        if index.kind != "hnsw":
            return set()
        return set(index.rows().tolist()) - set(self.store.matching({}).tolist())

    def _build(self, kind: str) -> VectorIndex:
        """A new index of `kind` holding every item of the store (blocking)."""
        count = self.store.count()
        if kind == "ivf-pq" and count < self.spec.index.min_train(count):
            kind = "flat"  # not enough vectors to train yet: exact until there are
        train = np.empty((0, self.spec.dim), np.float32)
        if kind == "ivf-pq":
            train = _sample(self.store, max(self.spec.index.min_train(count), 100_000))
        index = VectorIndex.build(kind, self.spec.dim, self.spec.metric, self.spec.index, train)
        for rows, vectors in self.store.scan():
            index.add(rows, vectors)
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
        keep the shadow in step (see `Reindexing._route`).
        """
        for i, item in enumerate(items):
            if not item.id:
                raise InvalidInput(f"item {i}: id is empty")
        vectors = self._prepare(np.stack([item.vector for item in items]))
        with self._write:
            vectors, shadow_vectors = self._route(items, vectors, version, next_vectors)
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
            if self._shadow is not None:
                self._shadow.apply(written, shadow_vectors)
        self._after_write(written.seq)
        return written.seq

    def delete(self, ids: Sequence[str]) -> int:
        with self._write:
            written = self.store.delete(ids)
            with self._read:
                self.index.remove(written.removed)
            if self._shadow is not None:
                self._shadow.apply(written, None)
        self._after_write(written.seq)
        return len(written.removed)

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.spec.metric == "cosine":
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, np.float32(1e-12))
        return vectors

    def _after_write(self, seq: int) -> None:
        due = seq - self.snapshot_seq >= self.SNAPSHOT_EVERY
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
            if seq == self.snapshot_seq and list(self.folder.glob("index-*.faiss")):
                return
            data = self.index.serialize()
        path = self.folder / f"index-{seq:012d}.faiss"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            data.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(self.folder)
        for old in self.folder.glob("index-*.faiss"):
            if old != path:
                old.unlink()
        self.snapshot_seq, self.snapshot_time = seq, time.time()
        if not self._rebuilding:
            self.store.prune_log(seq)

    def _drop_snapshots(self) -> None:
        """Deletes every snapshot, durably (they hold vectors a re-index is replacing)."""
        for old in self.folder.glob("index-*.faiss"):
            old.unlink()
        _fsync_dir(self.folder)

    def _maybe_rebuild(self) -> None:
        """Starts a background rebuild when the index no longer fits the collection: `auto`
        outgrew its type, IVF-PQ has enough vectors to train (or outgrew its lists), or HNSW
        holds too many tombstones."""
        with self._deciding:  # not while a re-index swaps
            if self._rebuilding:
                return
            config, index, live = self.spec.index, self.index, self.index.live
            target = config.target(live)
            if target == "ivf-pq" and live < config.min_train(live):
                target = "flat"  # exact until there is enough to train on
            wants = target != index.kind
            if index.kind == "hnsw":
                wants |= len(index.tombstones) > self.MAX_TOMBSTONES * max(index.ntotal, 1)
            if index.kind == "ivf-pq" and not config.ivf_nlist:
                wants |= config.nlist(live) > 2 * index.nlist
            if wants:
                self._rebuilding = threading.Thread(
                    target=self._rebuild,
                    args=(target,),
                    name=f"rebuild-{self.spec.name}",
                    daemon=True,
                )
                self._rebuilding.start()

    def _rebuild(self, kind: str) -> None:
        """Builds a new index beside the serving one, catches up with the log, swaps."""
        try:
            start, spec = self.store.seq(), self.spec
            fresh = self._build(kind)
            with self._write:
                if self.spec is not spec:  # a re-index swapped in other vectors meanwhile
                    log.info("collection %s: rebuild as %s superseded", spec.name, kind)
                    return
                fresh.tombstones = self._replay(fresh, start, set(fresh.rows().tolist()))
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
        queries = self._prepare(queries)
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
                limits, scores, hits = self.index.index.range_search(
                    np.ascontiguousarray(vectors), threshold
                )
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
        return {
            "count": self.store.count(),
            "built_type": kind,
            "memory_bytes": memory,
            "snapshot_seq": self.snapshot_seq,
            "snapshot_time": self.snapshot_time,
            "seq": self.store.seq(),
            "rebuilding": self._rebuilding is not None,
            "reindex": self.reindexing,
        }


def _snapshot_seq(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _sample(store: ItemStore, count: int) -> np.ndarray:
    parts, have = [], 0
    for _, vectors in store.scan():
        parts.append(vectors)
        have += len(vectors)
        if have >= count:
            break
    return np.concatenate(parts)[:count] if parts else np.empty((0, store.dim), np.float32)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
