"""Collections, as `lens.v1.Index`: create, list, describe, drop and re-index them. Their
items and searches: `lens_server.http.search`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, ConfigDict, Field

from lens_server.collections import IndexConfig
from lens_server.core import Core
from lens_server.core.index import CollectionInfo
from lens_server.http.codec import model_ref
from lens_server.http.errors import RESPONSES
from lens_server.http.fetch import Fetcher
from lens_server.http.state import core_of, fetcher_of

router = APIRouter(tags=["Collections"], responses=RESPONSES)
CoreDep = Annotated[Core, Depends(core_of)]
FetcherDep = Annotated[Fetcher, Depends(fetcher_of)]

Metric = Literal["cosine", "inner_product", "l2"]
_FILTER = 'Metadata to match: {"key": value} or {"key": {"in": [values]}}.'


class IndexSpec(BaseModel):
    """How the collection is indexed; a parameter left out (or 0) takes the default."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "flat", "hnsw", "ivf-pq"] = Field(
        default="auto", description="auto: flat while small, then HNSW, then IVF-PQ."
    )
    hnsw_m: int = 0
    hnsw_ef_construction: int = 0
    hnsw_ef_search: int = 0
    ivf_nlist: int = Field(default=0, description="0: from the item count.")
    ivf_nprobe: int = 0
    pq_m: int = Field(default=0, description="0: from the dimension.")
    pq_nbits: int = 0
    storage: Literal["float32", "float16", "int8", "binary"] = Field(
        default="float32",
        description="float16 or int8 (scalar quantized), or binary (sign bits, flat only, "
        "rescored exactly): less memory per vector.",
    )


class CreateCollectionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dim: int = Field(default=0, description="Vectors only (no model) when given alone.")
    metric: Metric = "cosine"
    model: str | None = Field(
        default=None, description="NAME or NAME:VERSION; neither this nor dim: the default."
    )
    index: IndexSpec = Field(default_factory=IndexSpec)
    backend: Literal["faiss", "milvus", "pgvector"] = Field(
        default="faiss",
        description="faiss: this server's SQLite and FAISS; milvus: the server's Milvus engine; "
        "pgvector: the server's PostgreSQL database.",
    )


class ReindexProgress(BaseModel):
    model: str
    version: int
    done: int
    total: int
    error: str


class CollectionOut(BaseModel):
    name: str
    model: str  # empty: vectors only
    version: int
    dim: int
    metric: str
    index: IndexSpec
    count: int
    built_type: str
    built_storage: str
    backend: str
    memory_bytes: int
    snapshot_seq: int
    snapshot_time: float
    seq: int
    rebuilding: bool
    reindex: ReindexProgress | None


class CollectionList(BaseModel):
    collections: list[CollectionOut]


class Dropped(BaseModel):
    name: str
    dropped: bool = True


class ReindexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=0, ge=0, description="0: the model's serving version.")


@router.get("/v1/collections", response_model=CollectionList)
async def list_collections(core: CoreDep) -> CollectionList:
    return CollectionList(collections=[_collection(c) for c in await core.indexing.all()])


@router.post("/v1/collections", response_model=CollectionOut, status_code=status.HTTP_201_CREATED)
async def create_collection(body: CreateCollectionRequest, core: CoreDep) -> CollectionOut:
    index = body.index.model_dump()
    config = IndexConfig(**{f: v for f, v in index.items() if v})
    name, version = model_ref(body.model)
    info = await core.indexing.create(
        body.name, body.dim, body.metric, name, version, config, backend=body.backend
    )
    return _collection(info)


@router.get("/v1/collections/{collection}", response_model=CollectionOut)
async def describe_collection(collection: str, core: CoreDep) -> CollectionOut:
    return _collection(await core.indexing.describe(collection))


@router.delete("/v1/collections/{collection}", response_model=Dropped)
async def drop_collection(collection: str, core: CoreDep) -> Dropped:
    await core.indexing.drop(collection)
    return Dropped(name=collection)


@router.post("/v1/collections/{collection}/reindex", response_model=CollectionOut)
async def reindex(
    collection: str, core: CoreDep, body: ReindexRequest | None = None
) -> CollectionOut:
    """Re-embeds the collection with another version of its model, in the background;
    `reindex` in the answer (and in `GET /v1/collections/{collection}`) shows the progress."""
    version = (body or ReindexRequest()).version
    return _collection(await core.indexing.reindex(collection, version))


# -- items -----------------------------------------------------------------------------------


def _collection(info: CollectionInfo) -> CollectionOut:
    spec = info.spec
    return CollectionOut(
        name=spec.name,
        model=spec.model,
        version=spec.version,
        dim=spec.dim,
        metric=spec.metric,
        index=IndexSpec(**{f: getattr(spec.index, f) for f in IndexSpec.model_fields}),
        count=info.count,
        built_type=info.built_type,
        built_storage=info.built_storage,
        backend=spec.backend,
        memory_bytes=info.memory_bytes,
        snapshot_seq=info.snapshot_seq,
        snapshot_time=info.snapshot_time,
        seq=info.seq,
        rebuilding=info.rebuilding,
        reindex=ReindexProgress.model_validate(asdict(info.reindex)) if info.reindex else None,
    )
