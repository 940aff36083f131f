"""A collection's items and searches, as `lens.v1.Index`: write, read and delete items;
search by text, image (JSON or a multipart upload), vector or stored id; find duplicates.

Metadata is a JSON object in requests and responses (the core keeps it as JSON text).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from lens_server.collections import Hit
from lens_server.core import Core, ItemIn, QueryIn, SearchResult
from lens_server.core.index import CONTENT_KINDS, QUERY_KINDS
from lens_server.errors import InvalidInput
from lens_server.http.codec import encode_vectors
from lens_server.http.errors import RESPONSES
from lens_server.http.fetch import Fetcher
from lens_server.http.state import core_of, fetcher_of
from lens_server.http.uploads import openapi_body, parse

router = APIRouter(tags=["Collections"], responses=RESPONSES)
CoreDep = Annotated[Core, Depends(core_of)]
FetcherDep = Annotated[Fetcher, Depends(fetcher_of)]

_FILTER = 'Metadata to match: {"key": value} or {"key": {"in": [values]}}.'


class ItemRequest(BaseModel):
    """One item: `text`, `image` (base64 or a data:image/... URI) or `vector`."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str | None = None
    image: str | None = None
    vector: list[float] | None = None
    metadata: dict[str, Any] | None = None


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemRequest]


class UpsertResponse(BaseModel):
    upserted: int
    # The write's sequence number: once answered, the items are on disk.
    seq: int


class IdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str]


class GetRequest(IdsRequest):
    include_vectors: bool = False
    encoding_format: Literal["float", "base64"] = "float"


class StoredItemOut(BaseModel):
    id: str
    metadata: dict[str, Any]
    source: str  # what the vector was made from: image, text or vector
    vector: list[float] | str | None = None


class GetResponse(BaseModel):
    # The items found, in the order asked; unknown ids are left out.
    items: list[StoredItemOut]


class DeleteResponse(BaseModel):
    deleted: int


class QueryRequest(BaseModel):
    """One of `text`, `image` (base64 or a data:image/... URI), `vector`, or the `id` of a
    stored item (its vector is the query)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = None
    vector: list[float] | None = None
    id: str | None = None


class SearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(default=10, description="Hits per query.")
    # JSON bodies send an object; multipart forms its JSON text.
    filter: dict[str, Any] | str | None = Field(default=None, description=_FILTER)
    exact: bool = Field(default=False, description="Search every vector, not the index.")


class SearchRequest(SearchOptions):
    # None in a multipart form, whose `image` file is the query.
    query: QueryRequest | None = None


class SearchBatchRequest(SearchOptions):
    queries: list[QueryRequest]


class HitOut(BaseModel):
    id: str
    score: float
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[HitOut]
    # The model version that embedded the query.
    model: str
    version: int


class HitsOut(BaseModel):
    hits: list[HitOut]


class SearchBatchResponse(BaseModel):
    results: list[HitsOut]  # one per query, in order
    model: str
    version: int


class DuplicatesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(description="Least similarity of a pair (l2: most distance).")
    max_pairs: int = Field(default=0, description="0: up to 10,000.")


class PairOut(BaseModel):
    a: str
    b: str
    score: float


class DuplicatesResponse(BaseModel):
    pairs: list[PairOut]
    groups: list[list[str]]  # the pairs joined into groups, largest first


SEARCH_FORM = {
    "image": {"type": "string", "format": "binary"},
    "k": {"type": "integer"},
    "filter": {"type": "string", "description": f"JSON text. {_FILTER}"},
    "exact": {"type": "boolean"},
}


# -- collections -----------------------------------------------------------------------------


@router.post("/v1/collections/{collection}/items", response_model=UpsertResponse)
async def upsert(
    collection: str, body: UpsertRequest, core: CoreDep, fetcher: FetcherDep
) -> UpsertResponse:
    """Writes the items, replacing those with the same ids."""
    items = []
    for i, item in enumerate(body.items):
        kind, value = await _content(item, f"items[{i}]", fetcher)
        metadata = json.dumps(item.metadata) if item.metadata is not None else ""
        items.append(ItemIn(item.id, kind, value, metadata))
    count, seq = await core.indexing.upsert(collection, items)
    return UpsertResponse(upserted=count, seq=seq)


@router.post("/v1/collections/{collection}/get", response_model=GetResponse)
async def get_items(collection: str, body: GetRequest, core: CoreDep) -> GetResponse:
    rows = await core.indexing.get(collection, body.ids)
    vectors: list[Any] = [None] * len(rows)
    if body.include_vectors and rows:
        vectors = encode_vectors(np.stack([r.vector for r in rows]), body.encoding_format)
    return GetResponse(
        items=[
            StoredItemOut(id=r.id, metadata=_metadata(r.metadata), source=r.source_kind, vector=v)
            for r, v in zip(rows, vectors, strict=True)
        ]
    )


@router.post("/v1/collections/{collection}/delete", response_model=DeleteResponse)
async def delete_items(collection: str, body: IdsRequest, core: CoreDep) -> DeleteResponse:
    return DeleteResponse(deleted=await core.indexing.delete(collection, body.ids))


# -- search ----------------------------------------------------------------------------------


@router.post(
    "/v1/collections/{collection}/search",
    response_model=SearchResponse,
    openapi_extra=openapi_body(SearchRequest, SEARCH_FORM),
)
async def search(
    collection: str, request: Request, core: CoreDep, fetcher: FetcherDep
) -> SearchResponse:
    """The `k` nearest items to one query whose metadata matches `filter`."""
    body, files = await parse(request, SearchRequest)
    if files:
        if len(files) > 1 or body.query is not None:
            raise InvalidInput("search takes one query: one image file, or query")
        query = QueryIn("image", files[0])
    elif body.query is None:
        raise InvalidInput("query is missing: give one of text, image, vector or id")
    else:
        query = await _query(body.query, "query", fetcher)
    result = await _search(core, collection, [query], body)
    return SearchResponse(hits=_hits(result.hits[0]), model=result.model, version=result.version)


@router.post("/v1/collections/{collection}/search/batch", response_model=SearchBatchResponse)
async def search_batch(
    collection: str, body: SearchBatchRequest, core: CoreDep, fetcher: FetcherDep
) -> SearchBatchResponse:
    """The `k` nearest items to each query, embedded in one batch."""
    queries = [await _query(q, f"queries[{i}]", fetcher) for i, q in enumerate(body.queries)]
    result = await _search(core, collection, queries, body)
    return SearchBatchResponse(
        results=[HitsOut(hits=_hits(h)) for h in result.hits],
        model=result.model,
        version=result.version,
    )


@router.post("/v1/collections/{collection}/duplicates", response_model=DuplicatesResponse)
async def duplicates(collection: str, body: DuplicatesRequest, core: CoreDep) -> DuplicatesResponse:
    """Pairs of items at least `threshold` alike, and the groups they join into."""
    found = await core.indexing.duplicates(collection, body.threshold, body.max_pairs)
    return DuplicatesResponse(
        pairs=[PairOut(a=a, b=b, score=s) for a, b, s in found.pairs], groups=found.groups
    )


# -- translation -----------------------------------------------------------------------------


async def _content(
    given: ItemRequest | QueryRequest, where: str, fetcher: Fetcher
) -> tuple[str, Any]:
    """The one content of an item or a query as (kind, value), the image decoded."""
    kinds = QUERY_KINDS if isinstance(given, QueryRequest) else CONTENT_KINDS
    present = [k for k in kinds if getattr(given, k) is not None]
    if len(present) != 1:
        found = f"has {' and '.join(present)}" if present else "has none"
        raise InvalidInput(f"{where}: give exactly one of {', '.join(kinds)} ({found})")
    (kind,) = present
    if kind == "image":
        return kind, await fetcher.image(given.image or "", f"{where}.image")
    return kind, getattr(given, kind)


async def _query(given: QueryRequest, where: str, fetcher: Fetcher) -> QueryIn:
    kind, value = await _content(given, where, fetcher)
    return QueryIn(kind, value)


async def _search(
    core: Core, collection: str, queries: list[QueryIn], options: SearchOptions
) -> SearchResult:
    filter_ = options.filter
    filter_json = json.dumps(filter_) if isinstance(filter_, dict) else filter_ or ""
    return await core.indexing.search(collection, queries, options.k, filter_json, options.exact)


def _hits(hits: list[Hit]) -> list[HitOut]:
    return [HitOut(id=h.id, score=h.score, metadata=_metadata(h.metadata)) for h in hits]


def _metadata(text: str) -> dict[str, Any]:
    return json.loads(text) if text else {}
