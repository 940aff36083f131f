"""Routes for looking at a collection (what the web page shows): an item's thumbnail, made
from its stored source, and a 2-D map of the collection's vectors (`lens_server.core.browse`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response, status
from pydantic import BaseModel

from lens_server.core import Core
from lens_server.core.browse import PROJECTIONS, THUMBNAIL_SIZES, projections
from lens_server.http.errors import RESPONSES
from lens_server.http.state import core_of

router = APIRouter(tags=["Collections"], responses=RESPONSES)
CoreDep = Annotated[Core, Depends(core_of)]

# Kept by the browser, but asked again each time with If-None-Match (answered 304 while the
# item is unchanged): an item written again under the same id shows at once.
_CACHE_CONTROL = "private, no-cache"
_IMAGE = {"schema": {"type": "string", "format": "binary"}}
_THUMBNAIL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The thumbnail, with its `ETag`.",
        "content": {"image/jpeg": _IMAGE, "image/png": _IMAGE},
    },
    304: {"description": "Not modified: the `If-None-Match` tag is current."},
}


class MapPoint(BaseModel):
    id: str
    x: float
    y: float
    metadata: dict[str, Any]


class MapOut(BaseModel):
    collection: str
    version: int  # the model version of the vectors
    seq: int  # the collection's write sequence number the map was made at
    total: int  # items in the collection
    sampled: bool  # points are a sample of the items
    method: str  # the projection: pca or umap
    methods: list[str]  # the projections this server can make
    explained: list[float]  # PCA: share of the variance along x and y; UMAP: empty
    points: list[MapPoint]


# `path`: an item's id may hold slashes (a file's path, say); the page sends them escaped.
@router.get(
    "/v1/collections/{collection}/items/{item:path}/thumbnail",
    response_class=Response,
    responses=_THUMBNAIL_RESPONSES,
)
async def thumbnail(
    collection: str,
    item: str,
    core: CoreDep,
    size: Annotated[
        int,
        Query(description=f"Longer side in pixels, {THUMBNAIL_SIZES[0]}..{THUMBNAIL_SIZES[1]}."),
    ] = 256,
    if_none_match: Annotated[str, Header()] = "",
) -> Response:
    """The item's stored image (or its text, drawn) resized to fit `size` pixels."""
    known = tuple(t.strip().removeprefix("W/") for t in if_none_match.split(",") if t.strip())
    found = await core.browsing.thumbnail(collection, item, size, known)
    headers = {"ETag": found.etag, "Cache-Control": _CACHE_CONTROL}
    if found.data is None:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(found.data, media_type=found.media_type, headers=headers)


@router.get("/v1/collections/{collection}/map", response_model=MapOut)
async def collection_map(
    collection: str,
    core: CoreDep,
    method: Annotated[
        str,
        Query(
            description=f"The projection: {' or '.join(PROJECTIONS)} (UMAP where the server "
            "has umap-learn, the `umap` extra)."
        ),
    ] = "pca",
) -> MapOut:
    """The items on two axes, up to 10,000 of them (a uniform sample beyond): the first two
    principal components of their vectors (PCA), or a UMAP layout; each made again once the
    collection changes."""
    made = await core.browsing.map(collection, method)
    return MapOut(
        collection=collection,
        version=made.version,
        seq=made.seq,
        total=made.total,
        sampled=len(made.ids) < made.total,
        method=made.method,
        methods=list(projections()),
        explained=list(made.explained),
        points=[
            MapPoint(id=i, x=float(x), y=float(y), metadata=json.loads(m) if m else {})
            for i, (x, y), m in zip(made.ids, made.xy.tolist(), made.metadata, strict=True)
        ],
    )
