"""Re-indexing a collection with another model version, beside the index that serves.

The target version's vectors of the live rows re-embedded so far live in the store's
`next_vectors` table and in an in-memory "shadow" index; searches keep answering from the
current vectors meanwhile. Every write keeps the shadow in step: removed rows leave it, new
rows join it when the writer embedded them with the target version too (a dual write) and
are otherwise left pending for the driver, which re-embeds the pending rows' sources in
batches (`pending` → `put`). Once no live row is pending, `swap` moves every item to its new
vector and records the new version in one SQLite transaction (the version wins over
`collection.json` on open), and the shadow index becomes the collection's index; the caller
deletes the snapshots of the old vectors before that commit, so a crash at any point leaves
either the old collection (with the re-index to resume) or the new one. The shadow index is
not snapshotted: opening a collection rebuilds it from the table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, replace
from pathlib import Path

import numpy as np

from lens_server.collections.faiss_index import VectorIndex
from lens_server.collections.next_vectors import NextVectors
from lens_server.collections.spec import CollectionSpec, ModelVersion, check_dim, check_version
from lens_server.collections.store import ItemStore, NewItem, Written
from lens_server.errors import FailedPrecondition, InvalidInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReindexState:
    """A re-index in progress: its target, and the live rows re-embedded (`done`) of all
    (`total`)."""

    model: str
    version: int
    dim: int
    done: int
    total: int


class Shadow:
    """The target version's vectors: the `next_vectors` table and an index of them.

    Changes run under the collection's write lock, so the index follows the table.
    """

    def __init__(self, table: NextVectors, target: ModelVersion, index: VectorIndex) -> None:
        self.table = table
        self.target = target
        self.index = index
        # Every live row below this has a next-version vector: rows are never reused, so a
        # row once done stays done, and new rows come after every existing one.
        self.low = 0

    @classmethod
    def load(
        cls, table: NextVectors, target: ModelVersion, spec: CollectionSpec, count: int
    ) -> Shadow:
        """The shadow of what `table` holds (empty right after `begin`), for a collection of
        `spec` holding `count` items."""
        kind = spec.index.target(count)
        if kind == "ivf-pq":
            kind = "flat"  # IVF-PQ needs training: the rebuild after the swap converts
        empty = np.empty((0, target.dim), np.float32)
        index = VectorIndex.build(kind, target.dim, spec.metric, spec.index, empty)
        for rows, vectors in table.scan(target.dim):
            index.add(rows, vectors)
        return cls(table, target, index)

    def state(self) -> ReindexState:
        target = self.target
        done, total = self.table.progress()
        return ReindexState(target.model, target.version, target.dim, done, total)

    def pending(self, limit: int, after: int) -> list[tuple[int, str, bytes | None]]:
        found = self.table.pending(max(after, self.low - 1), limit)
        if found and after < self.low:
            self.low = max(self.low, found[0][0])
        return found

    def put(self, rows: np.ndarray, vectors: np.ndarray) -> int:
        """Stores and indexes the vectors (n, dim) of the rows still live; how many."""
        stored = self.table.put(rows, vectors)
        self.index.add(rows[stored], vectors[stored])
        return len(stored)

    def apply(self, written: Written, vectors: np.ndarray | None) -> None:
        """Follows a store write that removed `written.removed_next` and stored `vectors`
        (n, dim) for `written.added`, if given."""
        self.index.remove(written.not_added(written.removed_next))
        if vectors is not None:
            kept = written.kept()
            self.index.add(np.array(written.added, np.int64)[kept], vectors[kept])


class Reindexer:
    """The re-index of one collection, given its `store`: the target version's vectors, the
    shadow index of them while one runs, and what a write must do meanwhile.

    It holds no lock: the collection calls every method under its write lock (`state` and
    `target` aside, which read one reference), and `swap` under all of its locks. Vectors
    given to it are prepared (`CollectionSpec.prepare`) already.
    """

    def __init__(self, store: ItemStore) -> None:
        self.store = store
        self.table = NextVectors(store)
        self.shadow: Shadow | None = None

    def restore(self, spec: CollectionSpec, folder: Path) -> CollectionSpec:
        """`spec` with the model version the database records (a swap may have committed
        without its spec being saved in `folder`), and the re-index in progress loaded."""
        current = self.table.current()
        if current is not None and astuple(current) != (spec.model, spec.version, spec.dim):
            spec = replace(spec, model=current.model, version=current.version, dim=current.dim)
            spec.save(folder)
            log.warning("collection %s: spec updated to %s", spec.name, current)
        self.store.dim = spec.dim
        target = self.table.target()
        self.shadow = None if target is None else self._load(target, spec)
        return spec

    @property
    def target(self) -> ModelVersion | None:
        """The version a re-index in progress embeds with (no counting: cheap)."""
        shadow = self.shadow
        return shadow.target if shadow is not None else None

    def state(self) -> ReindexState | None:
        shadow = self.shadow
        return shadow.state() if shadow is not None else None

    def begin(self, spec: CollectionSpec, target: ModelVersion) -> None:
        """Starts re-embedding every item of the collection `spec` describes with `target`;
        resumes when that target is in progress already, starts over when another is.

        FailedPrecondition if the collection is at `target` already, or holds items given as
        raw vectors (they have no source to embed).
        """
        name, model, version = spec.name, target.model, target.version
        if (model, version) == (spec.model, spec.version):
            raise FailedPrecondition(f"collection {name} is at {model} version {version}")
        if self.shadow is not None and self.shadow.target == target:
            return
        raw = self.store.count_kind("vector")
        if raw:
            raise FailedPrecondition(
                f"collection {name} holds {raw} items given as raw vectors: they cannot be "
                f"re-embedded with {model} version {version}"
            )
        self.table.begin(target)
        self.shadow = self._load(target, spec)
        log.info("collection %s: re-indexing with %s version %d", name, model, version)

    def cancel(self) -> None:
        """Drops the re-index in progress, if any."""
        if self.shadow is not None:
            self.table.cancel()
            self.shadow = None

    def pending(self, limit: int, after: int) -> list[tuple[int, str, bytes | None]]:
        """(row, source kind, source) of up to `limit` live rows after row `after` that lack a
        vector of the target version, in row order; empty when none (or no re-index)."""
        shadow = self.shadow
        return shadow.pending(limit, after) if shadow is not None else []

    def put(self, rows: np.ndarray, vectors: np.ndarray, version: int | None) -> int:
        """Stores the target version's `vectors` (n, dim) of `rows` (n,) and indexes them in
        the shadow, skipping rows removed or replaced meanwhile; nothing when no re-index (or
        one to another `version`) is in progress. How many were stored."""
        shadow = self.shadow
        if shadow is None or version not in (None, shadow.target.version) or not len(rows):
            return 0
        target = shadow.target
        check_dim(vectors, target.dim, f"{target.model} version {target.version}")
        return shadow.put(rows, vectors)

    def route(
        self,
        spec: CollectionSpec,
        items: Sequence[NewItem],
        vectors: np.ndarray,
        version: int | None,
        next_vectors: tuple[int, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(the items' vectors, their target-version vectors for the shadow or None) of a
        write of `vectors` from model `version` (if known) to the collection `spec`.

        While re-indexing, items given as raw vectors are refused (FailedPrecondition), and
        `next_vectors` go to the shadow if they come from the target version; otherwise the
        new rows are left pending. VersionChanged if the collection swapped to another version
        than `version` meanwhile, unless `next_vectors` come from the one it swapped to: they
        are then the items' vectors.
        """
        shadow = self.shadow
        target = shadow.target if shadow is not None else None
        return route_write(spec, target, items, vectors, version, next_vectors)

    def apply(self, written: Written, vectors: np.ndarray | None) -> None:
        """Keeps the shadow in step with a store write (see `Shadow.apply`)."""
        if self.shadow is not None:
            self.shadow.apply(written, vectors)

    def swap(
        self, spec: CollectionSpec, before_commit: Callable[[], None]
    ) -> tuple[CollectionSpec, VectorIndex] | None:
        """Moves every item to its target-version vector in one transaction, `before_commit`
        run last in it; returns the collection's new spec and index (the shadow's), which the
        caller serves and then calls `end`. None, changing nothing, while a live row lacks a
        vector of the target (or no re-index runs)."""
        shadow = self.shadow
        if shadow is None:
            return None
        new = shadow.target
        if not self.table.swap(new, before_commit):
            return None
        return replace(spec, model=new.model, version=new.version, dim=new.dim), shadow.index

    def end(self) -> None:
        """Forgets the shadow once its index serves (after `swap`)."""
        self.shadow = None

    def _load(self, target: ModelVersion, spec: CollectionSpec) -> Shadow:
        return Shadow.load(self.table, target, spec, self.store.count())


def route_write(
    spec: CollectionSpec,
    target: ModelVersion | None,
    items: Sequence[NewItem],
    vectors: np.ndarray,
    version: int | None,
    next_vectors: tuple[int, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`Reindexer.route` for a collection re-indexing towards `target` (None: not
    re-indexing); the engine-held collections call it with their record's target."""
    raw = sum(item.source_kind == "vector" for item in items)
    if target is not None and raw:
        raise FailedPrecondition(
            f"collection {spec.name} is being re-indexed with {target.model} "
            f"version {target.version}: {raw} items given as raw vectors cannot "
            "follow it"
        )
    next_version, next_ = next_vectors or (None, None)
    if next_ is not None:
        next_ = spec.prepare(next_)
        if next_.ndim != 2 or len(next_) != len(items):
            raise InvalidInput(f"{len(items)} items need ({len(items)}, dim) next vectors")
    if next_ is not None and target is None and next_version == spec.version != version:
        vectors, next_ = next_, None  # swapped after the writer embedded: next is current
    else:
        check_version(spec, version)
    check_dim(vectors, spec.dim, f"collection {spec.name}")
    if next_ is None or target is None or next_version != target.version:
        return vectors, None  # the rows stay pending
    return vectors, check_dim(next_, target.dim, f"{target.model} version {target.version}")
