"""Collection calls of both clients: create, upsert, search, deduplicate (awaited in
`AsyncLensClient`).

lens.create_collection("photos", index="hnsw")
lens.upsert("photos", ids=paths, images=paths, metadata=[{"album": "2024"}] * len(paths))
hits = lens.search("photos", text="a cat on a sofa", k=5, filter={"album": "2024"})
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from lens.v1 import common_pb2, index_pb2

from lens_client import codec
from lens_client.codec import Call, ImageLike, rpc

_METRICS = {
    "cosine": index_pb2.METRIC_COSINE,
    "inner_product": index_pb2.METRIC_INNER_PRODUCT,
    "l2": index_pb2.METRIC_L2,
}


class CollectionCalls:
    """Needs `self._index` (an `IndexStub`) and `self.timeout`."""

    _index: Any
    timeout: float

    @rpc
    def create_collection(
        self,
        name: str,
        *,
        model: str | None = None,
        metric: str = "cosine",
        index: str = "auto",
        dim: int = 0,
        storage: str = "",
        backend: str = "",
        **params: int,
    ) -> Call[dict[str, Any]]:
        """A new collection pinned to `model` (`NAME[:VERSION]`, default: the server's
        default model), or of raw vectors of length `dim`. `storage`: how its index holds
        vectors (float32, float16, int8 or binary; '': float32). `backend`: where it lives
        (faiss or milvus; '': faiss). `params`: IndexSpec fields such as `hnsw_m=32`,
        `ivf_nlist=1024`, `pq_m=64`."""
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {', '.join(_METRICS)}")
        request = index_pb2.CreateCollectionRequest(
            name=name,
            metric=_METRICS[metric],
            dim=dim,
            model=codec.parse_model(model) if not dim or model else common_pb2.ModelRef(),
            index=index_pb2.IndexSpec(type=index, storage=storage, backend=backend, **params),
        )
        return Call(self._index.CreateCollection, request, collection_dict, self.timeout)

    @rpc
    def collections(self) -> Call[list[dict[str, Any]]]:
        request = index_pb2.ListCollectionsRequest()
        return Call(self._index.ListCollections, request, _collection_list, self.timeout)

    @rpc
    def describe_collection(self, name: str) -> Call[dict[str, Any]]:
        request = index_pb2.CollectionRequest(name=name)
        return Call(self._index.DescribeCollection, request, collection_dict, self.timeout)

    @rpc
    def drop_collection(self, name: str) -> Call[None]:
        request = index_pb2.CollectionRequest(name=name)
        return Call(self._index.DropCollection, request, codec.nothing, self.timeout)

    @rpc
    def reindex_collection(self, name: str, version: int = 0) -> Call[dict[str, Any]]:
        """Re-embeds the collection with another version of its model (0: the serving one),
        in the background; `describe_collection(name)["reindex"]` shows the progress."""
        request = index_pb2.ReindexRequest(name=name, version=version)
        return Call(self._index.Reindex, request, collection_dict, self.timeout)

    @rpc
    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        *,
        images: Sequence[ImageLike] | None = None,
        texts: Sequence[str] | None = None,
        vectors: np.ndarray | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> Call[int]:
        """Adds or replaces items; exactly one of images, texts or vectors, one per id.
        Returns the number written. Each batch is acknowledged once it is on disk."""
        contents = [c for c in (images, texts, vectors) if c is not None]
        if len(contents) != 1 or len(contents[0]) != len(ids):
            raise ValueError("give exactly one of images, texts or vectors, one per id")
        if metadata is not None and len(metadata) != len(ids):
            raise ValueError("give one metadata dict per id")
        items = _items(ids, images, texts, vectors, metadata)
        requests = (
            index_pb2.UpsertRequest(collection=collection, items=list(chunk))
            for chunk in _batched(items, batch_size)
        )
        bar = codec.Progress(len(ids), "item", _upserted) if progress else None
        return Call(self._index.UpsertStream, requests, _written, None, stream=True, progress=bar)

    @rpc
    def delete(self, collection: str, ids: Sequence[str]) -> Call[int]:
        """Removes items by id; returns how many were there."""
        request = index_pb2.DeleteRequest(collection=collection, ids=list(ids))
        return Call(self._index.Delete, request, _deleted, self.timeout)

    @rpc
    def get(
        self, collection: str, ids: Sequence[str], *, include_vectors: bool = False
    ) -> Call[list[dict[str, Any]]]:
        """Items by id (`{"id", "metadata", "source"}`, with `"vector"` if asked), in the
        order asked; ids not present are left out."""
        request = index_pb2.GetRequest(
            collection=collection, ids=list(ids), include_vectors=include_vectors
        )
        decode = functools.partial(items_list, vectors=include_vectors)
        return Call(self._index.Get, request, decode, self.timeout)

    @rpc
    def search(
        self,
        collection: str,
        *,
        image: ImageLike | None = None,
        text: str | None = None,
        vector: np.ndarray | None = None,
        id: str | None = None,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        exact: bool = False,
    ) -> Call[list[dict[str, Any]]]:
        """The k nearest items to one query: `{"id", "score", "metadata"}`, closest first."""
        request = index_pb2.SearchRequest(
            collection=collection,
            query=query(image=image, text=text, vector=vector, id=id),
            k=k,
            filter_json=json.dumps(filter) if filter else "",
            exact=exact,
        )
        return Call(self._index.Search, request, hits, self.timeout)

    @rpc
    def search_batch(
        self,
        collection: str,
        vectors: np.ndarray,
        *,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        exact: bool = False,
    ) -> Call[list[list[dict[str, Any]]]]:
        """Many vector queries in one call: per query, its hits as `search` gives them."""
        request = index_pb2.SearchBatchRequest(
            collection=collection,
            queries=[query(vector=v) for v in np.asarray(vectors)],
            k=k,
            filter_json=json.dumps(filter) if filter else "",
            exact=exact,
        )
        return Call(self._index.SearchBatch, request, _hits_lists, self.timeout)

    @rpc
    def find_duplicates(
        self, collection: str, threshold: float, max_pairs: int = 0
    ) -> Call[dict[str, Any]]:
        """Pairs of items at least `threshold` similar, `(a, b, score)`, and the groups of
        ids they join into. No deadline: a range search over a large collection takes time."""
        request = index_pb2.FindDuplicatesRequest(
            collection=collection, threshold=threshold, max_pairs=max_pairs
        )
        return Call(self._index.FindDuplicates, request, duplicates_dict, None)


def query(
    *,
    image: ImageLike | None = None,
    text: str | None = None,
    vector: np.ndarray | None = None,
    id: str | None = None,
) -> index_pb2.Query:
    given = {"image": image, "text": text, "vector": vector, "id": id}
    chosen = [k for k, v in given.items() if v is not None]
    if len(chosen) != 1:
        raise ValueError("give exactly one of image, text, vector or id")
    if image is not None:
        return index_pb2.Query(image=codec.image_bytes(image))
    if vector is not None:
        return index_pb2.Query(vector=index_pb2.Vector(values=np.asarray(vector).tolist()))
    if text is not None:
        return index_pb2.Query(text=text)
    return index_pb2.Query(id=str(id))


def hits(response: index_pb2.SearchResponse) -> list[dict[str, Any]]:
    return [
        {"id": h.id, "score": h.score, "metadata": json.loads(h.metadata_json or "{}")}
        for h in response.hits
    ]


def items_list(response: index_pb2.GetResponse, vectors: bool) -> list[dict[str, Any]]:
    """The items of a Get, with their vectors if `vectors` (if the request asked for them)."""
    return [
        {
            "id": it.id,
            "metadata": json.loads(it.metadata_json or "{}"),
            "source": it.source,
            **({"vector": np.array(it.vector.values, np.float32)} if vectors else {}),
        }
        for it in response.items
    ]


def duplicates_dict(response: index_pb2.FindDuplicatesResponse) -> dict[str, Any]:
    return {
        "pairs": [(p.a, p.b, p.score) for p in response.pairs],
        "groups": [list(g.ids) for g in response.groups],
    }


def collection_dict(info: index_pb2.CollectionInfo) -> dict[str, Any]:
    metric = index_pb2.Metric.Name(info.metric).removeprefix("METRIC_").lower()
    return {
        "name": info.name,
        "model": info.model.name,
        "version": info.model.version,
        "dim": info.dim,
        "metric": metric,
        "index": info.index.type,
        "built": info.built_type,
        "storage": info.index.storage or "float32",
        "built_storage": info.built_storage,
        "backend": info.backend or "faiss",
        "count": info.count,
        "memory_bytes": info.memory_bytes,
        "seq": info.seq,
        "snapshot_seq": info.snapshot_seq,
        "rebuilding": info.rebuilding,
        "reindex": {
            "model": info.reindex.target.name,
            "version": info.reindex.target.version,
            "done": info.reindex.done,
            "total": info.reindex.total,
            "error": info.reindex.error,
        }
        if info.HasField("reindex")
        else None,
    }


def _collection_list(response: index_pb2.ListCollectionsResponse) -> list[dict[str, Any]]:
    return [collection_dict(c) for c in response.collections]


def _hits_lists(response: index_pb2.SearchBatchResponse) -> list[list[dict[str, Any]]]:
    return [hits(r) for r in response.results]


def _written(responses: list[index_pb2.UpsertResponse]) -> int:
    return sum(r.upserted for r in responses)


def _upserted(response: index_pb2.UpsertResponse) -> int:
    return response.upserted


def _deleted(response: index_pb2.DeleteResponse) -> int:
    return int(response.deleted)


def _items(ids, images, texts, vectors, metadata) -> Iterator[index_pb2.Item]:
    for i, id_ in enumerate(ids):
        meta = json.dumps(metadata[i]) if metadata is not None else ""
        if images is not None:
            yield index_pb2.Item(id=id_, image=codec.image_bytes(images[i]), metadata_json=meta)
        elif texts is not None:
            yield index_pb2.Item(id=id_, text=texts[i], metadata_json=meta)
        else:
            values = np.asarray(vectors[i], np.float32).tolist()
            yield index_pb2.Item(id=id_, vector=index_pb2.Vector(values=values), metadata_json=meta)


def _batched(items: Iterator[index_pb2.Item], size: int) -> Iterator[list[index_pb2.Item]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk
