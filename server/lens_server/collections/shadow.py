"""Re-indexing a collection with another model version, beside the index that serves.

The target version's vectors of the live rows re-embedded so far live in the store's
`next_vectors` table and in an in-memory "shadow" index; searches keep answering from the
current vectors meanwhile. Every write keeps the shadow in step: removed rows leave it, new
rows join it when the writer embedded them with the target version too (a dual write) and
are otherwise left pending for the driver, which re-embeds the pending rows' sources in
batches (`pending_sources` → `put_reindexed`). Once no live row is pending, `finish_reindex`
swaps atomically: one SQLite transaction moves every item to its new vector and records the
new version (it wins over `collection.json` on open), the shadow index becomes the index, and
the snapshots of the old vectors are deleted before that commit, so a crash at any point
leaves either the old collection (with the re-index to resume) or the new one. The shadow
index is not snapshotted: opening a collection rebuilds it from the table.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lens_server.collections.faiss_index import VectorIndex
from lens_server.collections.store import ItemStore, NewItem, Written
from lens_server.errors import FailedPrecondition, InvalidInput, Unavailable

if TYPE_CHECKING:
    from lens_server.collections.collection import CollectionSpec

log = logging.getLogger(__name__)


class VersionChanged(Unavailable):
    """The collection swapped to another model version after the caller embedded with the
    old one: embed again with the version now in `Collection.spec`."""


@dataclass(frozen=True)
class ModelVersion:
    """The model version a collection's vectors come from, and their dimension."""

    model: str
    version: int
    dim: int

    def __post_init__(self) -> None:
        if not self.model:
            raise InvalidInput("model name is empty")
        if self.dim < 1:
            raise InvalidInput(f"dim must be >= 1, got {self.dim}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> ModelVersion:
        return cls(**json.loads(raw))


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
    """The target version's vectors: the store's `next_vectors` and an index of them.

    Changes run under the collection's write lock, so the index follows the table.
    """

    def __init__(self, store: ItemStore, target: ModelVersion, index: VectorIndex) -> None:
        self.store = store
        self.target = target
        self.index = index
        # Every live row below this has a next-version vector: rows are never reused, so a
        # row once done stays done, and new rows come after every existing one.
        self.low = 0

    @classmethod
    def load(cls, store: ItemStore, target: ModelVersion, spec: CollectionSpec) -> Shadow:
        """The shadow of what `next_vectors` holds (empty right after `begin_next`)."""
        kind = spec.index.target(store.count())
        if kind == "ivf-pq":
            kind = "flat"  # IVF-PQ needs training: the rebuild after the swap converts
        empty = np.empty((0, target.dim), np.float32)
        index = VectorIndex.build(kind, target.dim, spec.metric, spec.index, empty)
        for rows, vectors in store.scan_next(target.dim):
            index.add(rows, vectors)
        return cls(store, target, index)

    def state(self) -> ReindexState:
        target = self.target
        done, total = self.store.progress_next()
        return ReindexState(target.model, target.version, target.dim, done, total)

    def pending(self, limit: int, after: int) -> list[tuple[int, str, bytes | None]]:
        found = self.store.pending_next(max(after, self.low - 1), limit)
        if found and after < self.low:
            self.low = max(self.low, found[0][0])
        return found

    def put(self, rows: np.ndarray, vectors: np.ndarray) -> int:
        """Stores and indexes the vectors (n, dim) of the rows still live; how many."""
        stored = self.store.put_next(rows, vectors)
        self.index.add(rows[stored], vectors[stored])
        return len(stored)

    def apply(self, written: Written, vectors: np.ndarray | None) -> None:
        """Follows a store write that removed `written.removed_next` and stored `vectors`
        (n, dim) for `written.added`, if given."""
        self.index.remove(written.not_added(written.removed_next))
        if vectors is not None:
            kept = written.kept()
            self.index.add(np.array(written.added, np.int64)[kept], vectors[kept])


class Reindexing:
    """The re-indexing half of `Collection`, which mixes it in: these methods share its store
    and locks (`_write` for every change, `_read` around the index) and block."""

    # Provided by `Collection`.
    folder: Path
    spec: CollectionSpec
    store: ItemStore
    index: VectorIndex
    _shadow: Shadow | None
    _write: threading.Lock
    _read: threading.Lock
    _deciding: threading.Lock
    _snapshotting: threading.Lock
    _rebuilding: threading.Thread | None

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _snapshot(self) -> None:
        raise NotImplementedError

    def _maybe_rebuild(self) -> None:
        raise NotImplementedError

    def _drop_snapshots(self) -> None:
        raise NotImplementedError

    # -- the re-index ------------------------------------------------------------------------

    def begin_reindex(self, model: str, version: int, dim: int) -> None:
        """Starts re-embedding every item with `model` `version` (vectors of `dim`) into a
        shadow; resumes when that target is in progress already, starts over when another is.

        FailedPrecondition if items were given as raw vectors (they have no source to embed);
        InvalidInput for a collection of vectors only.
        """
        name = self.spec.name
        if not self.spec.model:
            raise InvalidInput(f"collection {name} holds vectors only: it has no model")
        target = ModelVersion(model, version, dim)
        with self._write:
            if (model, version) == (self.spec.model, self.spec.version):
                raise FailedPrecondition(f"collection {name} is at {model} version {version}")
            if self._shadow is not None and self._shadow.target == target:
                return
            raw = self.store.count_kind("vector")
            if raw:
                raise FailedPrecondition(
                    f"collection {name} holds {raw} items given as raw vectors: they cannot be "
                    f"re-embedded with {model} version {version}"
                )
            self.store.begin_next(target.to_json())
            self._shadow = Shadow.load(self.store, target, self.spec)
        log.info("collection %s: re-indexing with %s version %d", name, model, version)

    def cancel_reindex(self) -> None:
        """Drops the re-index in progress, if any; the collection stays as it is."""
        with self._write:
            if self._shadow is not None:
                self.store.cancel_next()
                self._shadow = None

    @property
    def reindexing(self) -> ReindexState | None:
        shadow = self._shadow
        return shadow.state() if shadow is not None else None

    @property
    def reindex_target(self) -> ModelVersion | None:
        """The version a re-index in progress embeds with (no counting: cheap)."""
        shadow = self._shadow
        return shadow.target if shadow is not None else None

    def pending_sources(self, limit: int, after: int = 0) -> list[tuple[int, str, bytes | None]]:
        """(row, source kind, source) of up to `limit` live rows after row `after` that lack a
        vector of the target version, in row order; empty when none (or no re-index).

        A row stays pending until `put_reindexed` stores it: a driver that embeds several
        batches at once passes the last row it has in flight as `after`.
        """
        shadow = self._shadow
        return shadow.pending(limit, after) if shadow is not None else []

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
        vectors = self._prepare(vectors)
        with self._write:
            shadow = self._shadow
            if shadow is None or version not in (None, shadow.target.version) or not len(rows):
                return 0
            target = shadow.target
            _check_dim(vectors, target.dim, f"{target.model} version {target.version}")
            return shadow.put(rows, vectors)

    def finish_reindex(self) -> bool:
        """Swaps the shadow in, atomically and crash-safely, once every live row has a vector
        of the target version: True when no re-index remains (swapped now, or none was in
        progress); False, changing nothing, while a row lacks one or a rebuild runs."""
        with self._snapshotting:
            with self._deciding, self._write:
                shadow = self._shadow
                if shadow is None:
                    return True
                if self._rebuilding is not None:
                    return False
                new = shadow.target
                if not self.store.swap_next(new.to_json(), new.dim, self._drop_snapshots):
                    return False
                spec = replace(self.spec, model=new.model, version=new.version, dim=new.dim)
                with self._read:
                    self.index, self.spec, self._shadow = shadow.index, spec, None
                try:
                    spec.save(self.folder)
                except OSError:  # the database holds the version; `open` rewrites the spec
                    log.exception("collection %s: could not save its spec", spec.name)
            self._snapshot()
        log.info("collection %s: now at %s version %d", spec.name, new.model, new.version)
        self._maybe_rebuild()
        return True

    # -- helpers for Collection --------------------------------------------------------------

    def _restore(self, spec: CollectionSpec) -> CollectionSpec:
        """`spec` with the model version the database records (a swap may have committed
        without its spec being saved), and the re-index in progress loaded."""
        raw = self.store.meta("current")
        if raw is not None:
            current = ModelVersion.from_json(raw)
            if astuple(current) != (spec.model, spec.version, spec.dim):
                spec = replace(spec, model=current.model, version=current.version, dim=current.dim)
                spec.save(self.folder)
                log.warning("collection %s: spec updated to %s", spec.name, current)
        self.store.dim = spec.dim
        raw = self.store.meta("next")
        self._shadow = (
            None if raw is None else Shadow.load(self.store, ModelVersion.from_json(raw), spec)
        )
        return spec

    def _route(
        self,
        items: Sequence[NewItem],
        vectors: np.ndarray,
        version: int | None,
        next_vectors: tuple[int, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(the items' vectors, their target-version vectors for the shadow or None) of a
        write of `vectors` from model `version` (if known); call under the write lock.

        While re-indexing, items given as raw vectors are refused (FailedPrecondition), and
        `next_vectors` go to the shadow if they come from the target version; otherwise the
        new rows are left pending. VersionChanged if the collection swapped to another version
        than `version` meanwhile, unless `next_vectors` come from the one it swapped to: they
        are then the items' vectors.
        """
        spec, shadow = self.spec, self._shadow
        raw = sum(item.source_kind == "vector" for item in items)
        if shadow is not None and raw:
            raise FailedPrecondition(
                f"collection {spec.name} is being re-indexed with {shadow.target.model} "
                f"version {shadow.target.version}: {raw} items given as raw vectors cannot "
                "follow it"
            )
        next_version, next_ = next_vectors or (None, None)
        if next_ is not None:
            next_ = self._prepare(np.asarray(next_))
            if next_.ndim != 2 or len(next_) != len(items):
                raise InvalidInput(f"{len(items)} items need ({len(items)}, dim) next vectors")
        if next_ is not None and shadow is None and next_version == spec.version != version:
            vectors, next_ = next_, None  # swapped after the writer embedded: next is current
        else:
            check_version(spec, version)
        _check_dim(vectors, spec.dim, f"collection {spec.name}")
        if next_ is None or shadow is None or next_version != shadow.target.version:
            return vectors, None  # the rows stay pending
        target = shadow.target
        return vectors, _check_dim(next_, target.dim, f"{target.model} version {target.version}")


def check_version(spec: CollectionSpec, version: int | None) -> None:
    """VersionChanged unless vectors from model `version` (None: unknown) fit `spec`."""
    if version is not None and version != spec.version:
        raise VersionChanged(
            f"collection {spec.name} is at {spec.model} version {spec.version} now, "
            f"not {version}: embed again"
        )


def check_queries(spec: CollectionSpec, queries: np.ndarray, version: int | None) -> None:
    """Queries (n, dim) from model `version` fit `spec`: VersionChanged or InvalidInput."""
    check_version(spec, version)
    _check_dim(queries, spec.dim, f"collection {spec.name}")


def _check_dim(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    if vectors.shape[1] != dim:
        raise InvalidInput(f"vectors have dim {vectors.shape[1]}; {what} has {dim}")
    return vectors
