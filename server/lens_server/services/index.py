"""The `lens.v1.Index` service: proto ↔ core, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from lens.v1 import common_pb2, index_pb2, index_pb2_grpc

from lens_server.collections import Hit, IndexConfig
from lens_server.core.index import CollectionInfo, Indexing, ItemIn, QueryIn
from lens_server.errors import InvalidInput
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
SPEC_FIELDS = (
    "hnsw_m",
    "hnsw_ef_construction",
    "hnsw_ef_search",
    "ivf_nlist",
    "ivf_nprobe",
    "pq_m",
    "pq_nbits",
    "storage",
)


class IndexServicer(index_pb2_grpc.IndexServicer):
    def __init__(self, indexing: Indexing) -> None:
        self.indexing = indexing

    # -- collections -------------------------------------------------------------------------

    @unary
    async def CreateCollection(self, request, context):
        metric = _METRICS.get(request.metric)
        if metric is None:
            raise InvalidInput(f"unknown metric {request.metric}")
        index = request.index
        config = IndexConfig(
            type=index.type or "auto",
            **{f: getattr(index, f) for f in SPEC_FIELDS if getattr(index, f)},
        )
        info = await self.indexing.create(
            request.name,
            request.dim,
            metric,
            request.model.name,
            request.model.version,
            config,
            backend=index.backend or "faiss",
        )
        return _info(info)

    @unary
    async def ListCollections(self, request, context):
        return index_pb2.ListCollectionsResponse(
            collections=[_info(c) for c in await self.indexing.all()]
        )

    @unary
    async def DescribeCollection(self, request, context):
        return _info(await self.indexing.describe(request.name))

    @unary
    async def DropCollection(self, request, context):
        await self.indexing.drop(request.name)
        return index_pb2.DropCollectionResponse()

    @unary
    async def Reindex(self, request, context):
        return _info(await self.indexing.reindex(request.name, request.version))

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
        deleted = await self.indexing.delete(request.collection, list(request.ids))
        return index_pb2.DeleteResponse(deleted=deleted)

    async def _upsert(self, request: index_pb2.UpsertRequest, context) -> index_pb2.UpsertResponse:
        items = [
            ItemIn(item.id, kind or "", _value(item, kind), item.metadata_json)
            for item in request.items
            for kind in (item.WhichOneof("content"),)
        ]
        count, seq = await self.indexing.upsert(request.collection, items, deadline_of(context))
        return index_pb2.UpsertResponse(upserted=count, seq=seq)

    # -- reads -------------------------------------------------------------------------------

    @unary
    async def Get(self, request, context):
        rows = await self.indexing.get(request.collection, list(request.ids))
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
        result = await self.indexing.search(
            request.collection,
            [_query(request.query)],
            request.k,
            request.filter_json,
            request.exact,
            deadline_of(context),
        )
        return _response(result.hits[0], _ref(result.model, result.version))

    @unary
    async def SearchBatch(self, request, context):
        result = await self.indexing.search(
            request.collection,
            [_query(q) for q in request.queries],
            request.k,
            request.filter_json,
            request.exact,
            deadline_of(context),
        )
        model = _ref(result.model, result.version)
        return index_pb2.SearchBatchResponse(
            results=[_response(hits, model) for hits in result.hits], model=model
        )

    @unary
    async def FindDuplicates(self, request, context):
        found = await self.indexing.duplicates(
            request.collection, request.threshold, request.max_pairs
        )
        return index_pb2.FindDuplicatesResponse(
            pairs=[index_pb2.DuplicatePair(a=a, b=b, score=s) for a, b, s in found.pairs],
            groups=[index_pb2.DuplicateGroup(ids=g) for g in found.groups],
        )


def _value(message: Any, kind: str | None) -> Any:
    if kind is None:
        return b""
    value = getattr(message, kind)
    return list(value.values) if kind == "vector" else value


def _query(query: index_pb2.Query) -> QueryIn:
    kind = query.WhichOneof("query")
    return QueryIn(kind or "", _value(query, kind))


def _ref(model: str, version: int) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=model, version=version)


def _response(hits: list[Hit], model: common_pb2.ModelRef) -> index_pb2.SearchResponse:
    return index_pb2.SearchResponse(
        hits=[index_pb2.Hit(id=h.id, score=h.score, metadata_json=h.metadata) for h in hits],
        model=model,
    )


def _info(info: CollectionInfo) -> index_pb2.CollectionInfo:
    spec, index, reindex = info.spec, info.spec.index, info.reindex
    return index_pb2.CollectionInfo(
        name=spec.name,
        model=_ref(spec.model, spec.version),
        dim=spec.dim,
        metric=_METRIC_ENUMS[spec.metric],
        index=index_pb2.IndexSpec(
            type=index.type,
            backend=spec.backend,
            **{f: getattr(index, f) for f in SPEC_FIELDS},
        ),
        backend=spec.backend,
        reindex=index_pb2.ReindexProgress(
            target=_ref(reindex.model, reindex.version),
            done=reindex.done,
            total=reindex.total,
            error=reindex.error,
        )
        if reindex
        else None,
        count=info.count,
        built_type=info.built_type,
        built_storage=info.built_storage,
        memory_bytes=info.memory_bytes,
        snapshot_seq=info.snapshot_seq,
        snapshot_time=info.snapshot_time,
        seq=info.seq,
        rebuilding=info.rebuilding,
    )
