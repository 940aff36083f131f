"""The `lens.v1.Index` service: collections, upserts and searches."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from lens.v1 import common_pb2, index_pb2, index_pb2_grpc

from lens_server.collections import (
    Collection,
    Collections,
    CollectionSpec,
    Hit,
    IndexConfig,
    NewItem,
    ReindexState,
)
from lens_server.collections.collection import VersionChanged
from lens_server.collections.store import check_metadata
from lens_server.config import ServerConfig
from lens_server.deploy import Deployments
from lens_server.errors import InvalidInput
from lens_server.model import Input
from lens_server.registry import Registry
from lens_server.services.status import deadline_of, streaming, unary

_METRICS = {
    index_pb2.METRIC_UNSPECIFIED: "cosine",
    index_pb2.METRIC_COSINE: "cosine",
    index_pb2.METRIC_INNER_PRODUCT: "inner_product",
    index_pb2.METRIC_L2: "l2",
}
_METRIC_ENUMS = {
    "cosine": index_pb2.METRIC_COSINE,
    "inner_product": index_pb2.METRIC_INNER_PRODUCT,
    "l2": index_pb2.METRIC_L2,
}
T = TypeVar("T")
# Times a request re-embeds when its collection swaps to another model version meanwhile.
_ATTEMPTS = 3
_SPEC_FIELDS = (
    "hnsw_m",
    "hnsw_ef_construction",
    "hnsw_ef_search",
    "ivf_nlist",
    "ivf_nprobe",
    "pq_m",
    "pq_nbits",
)


class IndexServicer(index_pb2_grpc.IndexServicer):
    def __init__(
        self,
        collections: Collections,
        registry: Registry,
        deployments: Deployments,
        config: ServerConfig,
    ) -> None:
        self.collections = collections
        self.registry = registry
        self.deployments = deployments
        self.config = config

    # -- collections -------------------------------------------------------------------------

    @unary
    async def CreateCollection(self, request, context):
        spec = self._spec(request)
        collection = await asyncio.to_thread(self.collections.create, spec)
        return await self._info(collection)

    @unary
    async def ListCollections(self, request, context):
        found = [self.collections.get(n) for n in self.collections.names()]
        return index_pb2.ListCollectionsResponse(collections=[await self._info(c) for c in found])

    @unary
    async def DescribeCollection(self, request, context):
        return await self._info(self.collections.get(request.name))

    @unary
    async def DropCollection(self, request, context):
        collection = self.collections.get(request.name)
        await self.deployments.forget(collection)
        await asyncio.to_thread(self.collections.drop, request.name)
        if collection.spec.model:  # its version may be needed by nothing else now
            self.deployments.retire(collection.spec.model)
        return index_pb2.DropCollectionResponse()

    @unary
    async def Reindex(self, request, context):
        collection = self.collections.get(request.name)
        await self.deployments.reindex(collection, request.version)
        return await self._info(collection)

    # -- writes ------------------------------------------------------------------------------

    @unary
    async def Upsert(self, request, context):
        return await self._upsert(request, context)

    @streaming
    async def UpsertStream(self, requests, context) -> AsyncIterator[index_pb2.UpsertResponse]:
        # One at a time, in order: each response means its request is on disk.
        async for request in requests:
            yield await self._upsert(request, context)

    @unary
    async def Delete(self, request, context):
        collection = self.collections.get(request.collection)
        deleted = await asyncio.to_thread(collection.delete, list(request.ids))
        return index_pb2.DeleteResponse(deleted=deleted)

    async def _upsert(self, request: index_pb2.UpsertRequest, context) -> index_pb2.UpsertResponse:
        collection = self.collections.get(request.collection)
        items = request.items
        self._check_count(len(items), "items")
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if not item.id:
                raise InvalidInput(f"item {i}: id is empty")
            if item.id in seen:
                raise InvalidInput(f"item {i}: id {item.id!r} repeats item {seen[item.id]}")
            seen[item.id] = i
        metadata = [check_metadata(item.metadata_json, f"item {i}") for i, item in enumerate(items)]
        contents = [_content(item, i) for i, item in enumerate(items)]

        async def write(version: int) -> int:
            vectors = await self._vectors(collection, contents, context, version=version)
            # While the collection re-indexes, new items are embedded with the target version
            # too, so that the shadow keeps up with the writes.
            following = None
            target = collection.reindex_target
            if target is not None and _embedded(contents):
                following = (
                    target.version,
                    await self._vectors(collection, contents, context, version=target.version),
                )
            new = [
                NewItem(item.id, vector, meta, kind, _source(value))
                for item, vector, meta, (kind, value) in zip(
                    items, vectors, metadata, contents, strict=True
                )
            ]
            return await asyncio.to_thread(collection.upsert, new, following, version)

        seq, _ = await _at_current_version(collection, write)
        return index_pb2.UpsertResponse(upserted=len(items), seq=seq)

    # -- reads -------------------------------------------------------------------------------

    @unary
    async def Get(self, request, context):
        collection = self.collections.get(request.collection)
        rows = await asyncio.to_thread(collection.get, list(request.ids))
        return index_pb2.GetResponse(
            items=[
                index_pb2.StoredItem(
                    id=r.id,
                    metadata_json=r.metadata,
                    source=r.source_kind,
                    vector=index_pb2.Vector(values=r.vector.tolist())
                    if request.include_vectors
                    else None,
                )
                for r in rows
            ]
        )

    @unary
    async def Search(self, request, context):
        (hits,), model = await self._search(
            request.collection,
            [request.query],
            request.k,
            request.filter_json,
            request.exact,
            context,
        )
        return _response(hits, model)

    @unary
    async def SearchBatch(self, request, context):
        self._check_count(len(request.queries), "queries")
        results, model = await self._search(
            request.collection,
            list(request.queries),
            request.k,
            request.filter_json,
            request.exact,
            context,
        )
        return index_pb2.SearchBatchResponse(
            results=[_response(hits, model) for hits in results], model=model
        )

    @unary
    async def FindDuplicates(self, request, context):
        collection = self.collections.get(request.collection)
        max_pairs = request.max_pairs or 10_000
        if max_pairs < 0:
            raise InvalidInput(f"max_pairs must be >= 0, got {request.max_pairs}")
        pairs = await asyncio.to_thread(collection.duplicates, request.threshold, max_pairs)
        return index_pb2.FindDuplicatesResponse(
            pairs=[index_pb2.DuplicatePair(a=a, b=b, score=s) for a, b, s in pairs],
            groups=[index_pb2.DuplicateGroup(ids=g) for g in _groups(pairs)],
        )

    async def _search(
        self,
        name: str,
        queries: Sequence[index_pb2.Query],
        k: int,
        filter_json: str,
        exact: bool,
        context,
    ) -> tuple[list[list[Hit]], common_pb2.ModelRef]:
        collection = self.collections.get(name)
        if not 1 <= k <= self.config.limits.max_k:
            raise InvalidInput(f"k must be in 1..{self.config.limits.max_k}, got {k}")
        filter_ = _filter(filter_json)
        contents: list[tuple[str, Any]] = []
        for i, query in enumerate(queries):
            kind = query.WhichOneof("query")
            if kind is None:
                raise InvalidInput(f"query {i}: has no image, text, vector or id")
            contents.append((kind, getattr(query, kind)))
        by_id = [i for i, (source, _) in enumerate(contents) if source == "id"]
        placeholders = [("vector", None) if i in by_id else c for i, c in enumerate(contents)]

        async def search(version: int) -> list[list[Hit]]:
            vectors = await self._vectors(
                collection, placeholders, context, what="query", version=version
            )
            if by_id:  # an item's stored vector is the query
                ids = [contents[i][1] for i in by_id]
                vectors[by_id] = await asyncio.to_thread(collection.vectors_of, ids)
            return await asyncio.to_thread(collection.search, vectors, k, filter_, exact, version)

        hits, version = await _at_current_version(collection, search)
        return hits, common_pb2.ModelRef(name=collection.spec.model, version=version)

    # -- helpers -----------------------------------------------------------------------------

    async def _vectors(
        self,
        collection: Collection,
        contents: list[tuple[str, Any]],
        context,
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
        vectors = [
            (i, v) for i, (kind, v) in enumerate(contents) if kind == "vector" and v is not None
        ]
        for i, value in vectors:  # checked before any embedding is paid for
            if len(value.values) != spec.dim:
                raise InvalidInput(
                    f"{what} {i}: vector has {len(value.values)} values, "
                    f"collection {spec.name} has dim {spec.dim}"
                )
        if embed:
            with self.registry.lease(spec.model, version or spec.version) as model:
                out = np.zeros((len(contents), model.manifest.dim), np.float32)
                inputs: list[Input] = [contents[i][1] for i in embed]
                out[embed] = await model.embed(inputs, deadline_of(context), positions=embed)
        else:
            out = np.zeros((len(contents), spec.dim), np.float32)
        for i, value in vectors:
            out[i] = value.values
        return out

    def _check_count(self, count: int, what: str) -> None:
        limit = self.config.limits.max_inputs_per_request
        if count == 0:
            raise InvalidInput(f"{what} is empty")
        if count > limit:
            raise InvalidInput(f"{count} {what} is over the limit of {limit} per request")

    def _spec(self, request: index_pb2.CreateCollectionRequest) -> CollectionSpec:
        index = request.index
        config = IndexConfig(
            type=index.type or "auto",
            **{f: getattr(index, f) for f in _SPEC_FIELDS if getattr(index, f)},
        )
        metric = _METRICS.get(request.metric)
        if metric is None:
            raise InvalidInput(f"unknown metric {request.metric}")
        if request.dim and not request.model.name:
            return CollectionSpec(request.name, request.dim, metric, index=config)
        model = self.registry.resolve(request.model.name, request.model.version)
        if request.dim and request.dim != model.manifest.dim:
            raise InvalidInput(
                f"dim {request.dim} does not match model {model.name}'s {model.manifest.dim}"
            )
        return CollectionSpec(
            request.name, model.manifest.dim, metric, model.name, model.version, config
        )

    async def _info(self, collection: Collection) -> index_pb2.CollectionInfo:
        spec, state = collection.spec, await asyncio.to_thread(collection.describe)
        index = spec.index
        return index_pb2.CollectionInfo(
            name=spec.name,
            model=common_pb2.ModelRef(name=spec.model, version=spec.version),
            dim=spec.dim,
            metric=_METRIC_ENUMS[spec.metric],
            index=index_pb2.IndexSpec(
                type=index.type, **{f: getattr(index, f) for f in _SPEC_FIELDS}
            ),
            reindex=self._progress(collection, state.pop("reindex")),
            **state,
        )

    def _progress(self, collection: Collection, state: ReindexState | None):
        if state is None:
            return None
        return index_pb2.ReindexProgress(
            target=common_pb2.ModelRef(name=state.model, version=state.version),
            done=state.done,
            total=state.total,
            error=self.deployments.errors.get(collection.spec.name, ""),
        )


async def _at_current_version(
    collection: Collection, attempt: Callable[[int], Awaitable[T]]
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


def _content(item: index_pb2.Item, i: int) -> tuple[str, Any]:
    kind = item.WhichOneof("content")
    if kind is None:
        raise InvalidInput(f"item {i}: has no image, text or vector")
    return kind, getattr(item, kind)


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


def _response(hits: list[Hit], model: common_pb2.ModelRef) -> index_pb2.SearchResponse:
    return index_pb2.SearchResponse(
        hits=[index_pb2.Hit(id=h.id, score=h.score, metadata_json=h.metadata) for h in hits],
        model=model,
    )


def _groups(pairs: list[tuple[str, str, float]]) -> list[list[str]]:
    """Connected components of the duplicate pairs, largest first (union-find)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g))
