"""Collections: create and describe them, write items, search by image, text, vector or id.

Images and texts are embedded with the collection's model version, in the same batches as
every other request; while a collection re-indexes, writes are embedded with the target
version too, and a request that meets a version swap is done again with the new version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from lens_server.collections import (
    AnyCollection,
    Collections,
    CollectionSpec,
    Hit,
    IndexConfig,
    NewItem,
    ReindexState,
)
from lens_server.collections.collection import VersionChanged
from lens_server.collections.store import StoredRow, check_metadata
from lens_server.config import ServerConfig
from lens_server.deploy import Deployments
from lens_server.errors import InvalidInput
from lens_server.metrics import Metrics
from lens_server.model import Input
from lens_server.registry import Registry

T = TypeVar("T")
METRICS = ("cosine", "inner_product", "l2")
# Times a request re-embeds when its collection swaps to another model version meanwhile.
_ATTEMPTS = 3
CONTENT_KINDS = ("image", "text", "vector")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
QUERY_KINDS = (*CONTENT_KINDS, "id")


@dataclass(frozen=True)
class ItemIn:
    """An item to write: its content (`kind` image: encoded bytes; text: str; vector: floats)
    and its metadata as a JSON object text ('' for none)."""

    id: str
    kind: str
    value: bytes | str | Sequence[float] | np.ndarray
    metadata_json: str = ""


@dataclass(frozen=True)
class QueryIn:
    """A query: an image (bytes), a text, a vector, or the id of a stored item."""

    kind: str
    value: bytes | str | Sequence[float] | np.ndarray


@dataclass(frozen=True)
class SearchResult:
    """Hits of each query, best first, and the model version that embedded the queries."""

    hits: list[list[Hit]]
    model: str
    version: int


@dataclass(frozen=True)
class Reindex:
    """A re-index in progress: its target version, rows done of all, the last error met."""

    model: str
    version: int
    done: int
    total: int
    error: str


@dataclass(frozen=True)
class CollectionInfo:
    spec: CollectionSpec
    count: int
    built_type: str
    built_storage: str
    memory_bytes: int
    snapshot_seq: int
    snapshot_time: float
    seq: int
    rebuilding: bool
    reindex: Reindex | None


@dataclass(frozen=True)
class Duplicates:
    pairs: list[tuple[str, str, float]]
    groups: list[list[str]]


class Indexing:
    def __init__(
        self,
        collections: Collections,
        registry: Registry,
        deployments: Deployments,
        config: ServerConfig,
        metrics: Metrics | None = None,
    ) -> None:
        self.collections = collections
        self.registry = registry
        self.deployments = deployments
        self.config = config
        self.metrics = metrics

    # -- collections -------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        dim: int = 0,
        metric: str = "cosine",
        model: str = "",
        version: int = 0,
        index: IndexConfig | None = None,
        backend: str = "faiss",
    ) -> CollectionInfo:
        """A new collection of the vectors of `model:version` (the default model where no
        model and no `dim` is given), or of bare vectors of `dim` with no model, living in
        `backend` ("faiss": this server; "milvus": its Milvus engine; "pgvector": its
        PostgreSQL database)."""
        metric = metric or "cosine"
        if metric not in METRICS:
            raise InvalidInput(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
        if dim < 0:
            raise InvalidInput(f"dim must be >= 0, got {dim}")
        index = index or IndexConfig()
        if dim and not model:
            spec = CollectionSpec(name, dim, metric, index=index, backend=backend)
        else:
            loaded = self.registry.resolve(model, version)
            if dim and dim != loaded.manifest.dim:
                raise InvalidInput(
                    f"dim {dim} does not match model {loaded.name}'s {loaded.manifest.dim}"
                )
            spec = CollectionSpec(
                name,
                loaded.manifest.dim,
                metric,
                loaded.name,
                loaded.version,
                index,
                backend=backend,
            )
        collection = await asyncio.to_thread(self.collections.create, spec)
        return await self.describe(collection.spec.name)

    async def all(self) -> list[CollectionInfo]:
        return [await self.describe(n) for n in self.collections.names()]

    async def describe(self, name: str) -> CollectionInfo:
        collection = self.collections.get(name)
        state = await asyncio.to_thread(collection.describe)
        reindex: ReindexState | None = state.pop("reindex")
        progress = None
        if reindex is not None:
            error = self.deployments.errors.get(name, "")
            progress = Reindex(reindex.model, reindex.version, reindex.done, reindex.total, error)
        return CollectionInfo(spec=collection.spec, reindex=progress, **state)

    async def drop(self, name: str) -> None:
        collection = self.collections.get(name)
        await self.deployments.forget(collection)
        await asyncio.to_thread(self.collections.drop, name)
        if collection.spec.model:  # its version may be needed by nothing else now
            self.deployments.retire(collection.spec.model)

    async def reindex(self, name: str, version: int = 0) -> CollectionInfo:
        """Re-embeds the collection with `version` of its model (0: the serving one)."""
        await self.deployments.reindex(self.collections.get(name), version)
        return await self.describe(name)

    # -- writes ------------------------------------------------------------------------------

    async def upsert(
        self, name: str, items: Sequence[ItemIn], deadline: float | None = None
    ) -> tuple[int, int]:
        """Writes the items (replacing those with the same ids); returns (count, seq): once
        it returns, they are on disk."""
        collection = self.collections.get(name)
        self._check_count(len(items), "items")
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if not item.id:
                raise InvalidInput(f"item {i}: id is empty")
            if item.id in seen:
                raise InvalidInput(f"item {i}: id {item.id!r} repeats item {seen[item.id]}")
            if item.kind not in CONTENT_KINDS:
                raise InvalidInput(f"item {i}: has no image, text or vector")
            seen[item.id] = i
        metadata = [check_metadata(item.metadata_json, f"item {i}") for i, item in enumerate(items)]
        contents = [(item.kind, item.value) for item in items]

        async def write(version: int) -> int:
            vectors = await self._vectors(collection, contents, deadline, version=version)
            # While the collection re-indexes, new items are embedded with the target version
            # too, so that the shadow keeps up with the writes.
            following = None
            target = collection.reindex_target
            if target is not None and _embedded(contents):
                following = (
                    target.version,
                    await self._vectors(collection, contents, deadline, version=target.version),
                )
            new = [
                NewItem(item.id, vector, meta, item.kind, _source(item.value))
                for item, vector, meta in zip(items, vectors, metadata, strict=True)
            ]
            return await asyncio.to_thread(collection.upsert, new, following, version)

        seq, _ = await _at_current_version(collection, write)
        return len(items), seq

    async def delete(self, name: str, ids: Sequence[str]) -> int:
        collection = self.collections.get(name)
        return await asyncio.to_thread(collection.delete, list(ids))

    # -- reads -------------------------------------------------------------------------------

    async def get(self, name: str, ids: Sequence[str]) -> list[StoredRow]:
        collection = self.collections.get(name)
        return await asyncio.to_thread(collection.get, list(ids))

    async def search(
        self,
        name: str,
        queries: Sequence[QueryIn],
        k: int,
        filter_json: str = "",
        exact: bool = False,
        deadline: float | None = None,
    ) -> SearchResult:
        """The `k` nearest items to each query, where metadata matches `filter_json`;
        `exact` searches every vector (not the approximate index)."""
        collection = self.collections.get(name)
        self._check_count(len(queries), "queries")
        if not 1 <= k <= self.config.limits.max_k:
            raise InvalidInput(f"k must be in 1..{self.config.limits.max_k}, got {k}")
        filter_ = _filter(filter_json)
        for i, query in enumerate(queries):
            if query.kind not in QUERY_KINDS:
                raise InvalidInput(f"query {i}: has no image, text, vector or id")
        by_id = [i for i, q in enumerate(queries) if q.kind == "id"]
        placeholders = [("vector", None) if q.kind == "id" else (q.kind, q.value) for q in queries]

        async def search(version: int) -> list[list[Hit]]:
            vectors = await self._vectors(
                collection, placeholders, deadline, what="query", version=version
            )
            if by_id:  # an item's stored vector is the query
                ids = [str(queries[i].value) for i in by_id]
                vectors[by_id] = await asyncio.to_thread(collection.vectors_of, ids)
            with self.metrics.searching(name) if self.metrics else contextlib.nullcontext():
                return await asyncio.to_thread(
                    collection.search, vectors, k, filter_, exact, version
                )

        hits, version = await _at_current_version(collection, search)
        return SearchResult(hits, collection.spec.model, version)

    async def duplicates(self, name: str, threshold: float, max_pairs: int = 0) -> Duplicates:
        """Pairs of items at least `threshold` alike (at most `max_pairs`, 0: 10,000), and
        the groups they join into."""
        collection = self.collections.get(name)
        if max_pairs < 0:
            raise InvalidInput(f"max_pairs must be >= 0, got {max_pairs}")
        if not abs(threshold) <= _FLOAT32_MAX:  # NaN too
            raise InvalidInput(f"threshold must be a finite float32, got {threshold}")
        pairs = await asyncio.to_thread(collection.duplicates, threshold, max_pairs or 10_000)
        return Duplicates(pairs, groups(pairs))

    # -- helpers -----------------------------------------------------------------------------

    async def _vectors(
        self,
        collection: AnyCollection,
        contents: list[tuple[str, Any]],
        deadline: float | None,
        what: str = "item",
        version: int = 0,
    ) -> np.ndarray:
        """Vectors for image / text / vector contents: images and texts through `version` of
        the collection's model (batched with other requests), vectors checked for length."""
        spec = collection.spec
        embed = _embedded(contents)
        if embed and not spec.model:
            raise InvalidInput(
                f"{what} {embed[0]}: collection {spec.name} holds vectors "
                "only (it has no model to embed images or texts)"
            )
        vectors: list[tuple[int, np.ndarray]] = [
            (i, _floats(value, f"{what} {i}"))
            for i, (kind, value) in enumerate(contents)
            if kind == "vector" and value is not None
        ]
        for i, value in vectors:  # checked before any embedding is paid for
            if len(value) != spec.dim:
                raise InvalidInput(
                    f"{what} {i}: vector has {len(value)} values, "
                    f"collection {spec.name} has dim {spec.dim}"
                )
        if embed:
            with self.registry.lease(spec.model, version or spec.version) as model:
                out = np.zeros((len(contents), model.manifest.dim), np.float32)
                inputs: list[Input] = [contents[i][1] for i in embed]
                out[embed] = await model.embed(inputs, deadline, positions=embed)
        else:
            out = np.zeros((len(contents), spec.dim), np.float32)
        for i, value in vectors:
            out[i] = value
        return out

    def _check_count(self, count: int, what: str) -> None:
        limit = self.config.limits.max_inputs_per_request
        if count == 0:
            raise InvalidInput(f"{what} is empty")
        if count > limit:
            raise InvalidInput(f"{count} {what} is over the limit of {limit} per request")


async def _at_current_version(
    collection: AnyCollection, attempt: Callable[[int], Awaitable[T]]
) -> tuple[T, int]:
    """`attempt(version)` with the collection's model version, and that version; run again
    with the new one (at most `_ATTEMPTS` times in all) when the collection swaps meanwhile."""
    for _ in range(_ATTEMPTS - 1):
        version = collection.spec.version
        with contextlib.suppress(VersionChanged):
            return await attempt(version), version
    version = collection.spec.version
    return await attempt(version), version


def _embedded(contents: list[tuple[str, Any]]) -> list[int]:
    """Indices of the contents a model embeds (images and texts)."""
    return [i for i, (kind, _) in enumerate(contents) if kind in ("image", "text")]


def _floats(value: Any, where: str) -> np.ndarray:
    vector = np.asarray(value, dtype=np.float32)
    if vector.ndim != 1:
        raise InvalidInput(f"{where}: a vector is a flat list of numbers")
    if not np.isfinite(vector).all():
        raise InvalidInput(f"{where}: vector holds NaN or infinity")
    return vector


def _source(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return None


def _filter(raw: str) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"filter is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidInput('filter must be a JSON object of key: value or key: {"in": [...]}')
    return value


def groups(pairs: list[tuple[str, str, float]]) -> list[list[str]]:
    """Connected components of the duplicate pairs, largest first (union-find)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        parent[root(a)] = root(b)
    found: dict[str, list[str]] = {}
    for x in parent:
        found.setdefault(root(x), []).append(x)
    return sorted((sorted(g) for g in found.values()), key=lambda g: (-len(g), g))
