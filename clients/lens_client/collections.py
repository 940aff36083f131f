"""Collection calls of `LensClient`: create, upsert, search, deduplicate.

lens.create_collection("photos", index="hnsw")
lens.upsert("photos", ids=paths, images=paths, metadata=[{"album": "2024"}] * len(paths))
hits = lens.search("photos", text="a cat on a sofa", k=5, filter={"album": "2024"})
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from lens.v1 import common_pb2, index_pb2
from tqdm import tqdm

from lens_client import codec
from lens_client.codec import ImageLike, rpc_errors

_METRICS = {
    "cosine": index_pb2.METRIC_COSINE,
    "inner_product": index_pb2.METRIC_INNER_PRODUCT,
    "l2": index_pb2.METRIC_L2,
}


class CollectionCalls:
    """Needs `self._index` (an `IndexStub`) and `self.timeout`."""

    _index: Any
    timeout: float

    @rpc_errors
    def create_collection(
        self,
        name: str,
        *,
        model: str | None = None,
        metric: str = "cosine",
        index: str = "auto",
        dim: int = 0,
        **params: int,
    ) -> dict[str, Any]:
        """A new collection pinned to `model` (`NAME[:VERSION]`, default: the server's
        default model), or of raw vectors of length `dim`. `params`: IndexSpec fields such as
        `hnsw_m=32`, `ivf_nlist=1024`, `pq_m=64`."""
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {', '.join(_METRICS)}")
        request = index_pb2.CreateCollectionRequest(
            name=name,
            metric=_METRICS[metric],
            dim=dim,
            model=codec.parse_model(model) if not dim or model else common_pb2.ModelRef(),
            index=index_pb2.IndexSpec(type=index, **params),
        )
        return collection_dict(self._index.CreateCollection(request, timeout=self.timeout))

    @rpc_errors
    def collections(self) -> list[dict[str, Any]]:
        response = self._index.ListCollections(
            index_pb2.ListCollectionsRequest(), timeout=self.timeout
        )
        return [collection_dict(c) for c in response.collections]

    @rpc_errors
    def describe_collection(self, name: str) -> dict[str, Any]:
        request = index_pb2.CollectionRequest(name=name)
        return collection_dict(self._index.DescribeCollection(request, timeout=self.timeout))

    @rpc_errors
    def drop_collection(self, name: str) -> None:
        self._index.DropCollection(index_pb2.CollectionRequest(name=name), timeout=self.timeout)

    @rpc_errors
    def reindex_collection(self, name: str, version: int = 0) -> dict[str, Any]:
        """Re-embeds the collection with another version of its model (0: the serving one),
        in the background; `describe_collection(name)["reindex"]` shows the progress."""
        request = index_pb2.ReindexRequest(name=name, version=version)
        return collection_dict(self._index.Reindex(request, timeout=self.timeout))

    @rpc_errors
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
    ) -> int:
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
        written = 0
        with tqdm(total=len(ids), unit="item", disable=not progress) as bar:
            for response in self._index.UpsertStream(requests, timeout=None):
                bar.update(response.upserted)
                written += response.upserted
        return written

    @rpc_errors
    def delete(self, collection: str, ids: Sequence[str]) -> int:
        request = index_pb2.DeleteRequest(collection=collection, ids=list(ids))
        return int(self._index.Delete(request, timeout=self.timeout).deleted)

    @rpc_errors
    def get(
        self, collection: str, ids: Sequence[str], *, include_vectors: bool = False
    ) -> list[dict[str, Any]]:
        request = index_pb2.GetRequest(
            collection=collection, ids=list(ids), include_vectors=include_vectors
        )
        items = self._index.Get(request, timeout=self.timeout).items
        return [
            {
                "id": it.id,
                "metadata": json.loads(it.metadata_json or "{}"),
                "source": it.source,
                **({"vector": np.array(it.vector.values, np.float32)} if include_vectors else {}),
            }
            for it in items
        ]

    @rpc_errors
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
    ) -> list[dict[str, Any]]:
        """The k nearest items to one query: `{"id", "score", "metadata"}`, closest first."""
        request = index_pb2.SearchRequest(
            collection=collection,
            query=query(image=image, text=text, vector=vector, id=id),
            k=k,
            filter_json=json.dumps(filter) if filter else "",
            exact=exact,
        )
        return hits(self._index.Search(request, timeout=self.timeout))

    @rpc_errors
    def search_batch(
        self,
        collection: str,
        vectors: np.ndarray,
        *,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        exact: bool = False,
    ) -> list[list[dict[str, Any]]]:
        """Many vector queries in one call."""
        request = index_pb2.SearchBatchRequest(
            collection=collection,
            queries=[query(vector=v) for v in np.asarray(vectors)],
            k=k,
            filter_json=json.dumps(filter) if filter else "",
            exact=exact,
        )
        return [hits(r) for r in self._index.SearchBatch(request, timeout=self.timeout).results]

    @rpc_errors
    def find_duplicates(
        self, collection: str, threshold: float, max_pairs: int = 0
    ) -> dict[str, Any]:
        request = index_pb2.FindDuplicatesRequest(
            collection=collection, threshold=threshold, max_pairs=max_pairs
        )
        response = self._index.FindDuplicates(request, timeout=None)
        return {
            "pairs": [(p.a, p.b, p.score) for p in response.pairs],
            "groups": [list(g.ids) for g in response.groups],
        }


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
