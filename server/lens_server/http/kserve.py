"""KServe v2 (the Open Inference Protocol) over HTTP, as Triton serves it, so that
`tritonclient.http` and KServe's clients use lens unchanged: health, server and model
metadata, readiness, inference, and the model repository extension, under `/v2`.

Inference takes JSON tensors and Triton's binary-data extension (`kserve_tensors` decodes
and encodes them). Errors are `{"error": "..."}` with the status from the one table. What
the tensors mean is `lens_server.core.kserve`'s; this module only routes and translates.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from lens_server.core import Core
from lens_server.core.kserve import (
    EXTENSIONS,
    KServe,
    TensorSpec,
    server_version,
)
from lens_server.http.compat.errors import shaped
from lens_server.http.kserve_tensors import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    M,
    encode_answer,
    inline_schema,
    outputs_of,
    parse,
    read_request,
)
from lens_server.http.state import core_of


class Error(BaseModel):
    error: str


router = APIRouter(
    tags=["KServe v2"],
    route_class=shaped(lambda status, message: {"error": message}),
    responses={s: {"model": Error} for s in (400, 404, 409, 413, 415, 429, 503)},
)


# A coroutine, as `state.core_of` is: FastAPI runs a plain function on a worker thread.
async def kserve_of(core: Annotated[Core, Depends(core_of)]) -> KServe:
    return KServe(core)


KServeDep = Annotated[KServe, Depends(kserve_of)]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str
    reason: str


class IndexRequest(BaseModel):
    repository_name: str = ""
    ready: bool = False


class RepositoryRequest(BaseModel):
    parameters: dict[str, Any] = Field(default_factory=dict)


def _answer_not_ready(reason: str) -> JSONResponse:
    # The protocol: 200 is true, a 4xx false (Triton answers 400).
    return JSONResponse(Error(error=reason).model_dump(), status_code=400)


_NOT_READY: dict[int | str, dict[str, Any]] = {400: {"model": Error, "description": "Not ready"}}


# -- health and metadata ---------------------------------------------------------------------


@router.get("/v2", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="lens", version=server_version(), extensions=list(EXTENSIONS))


@router.get("/v2/health/live", response_model=Live)
async def live() -> Live:
    """200 as long as the process answers."""
    return Live(live=True)


@router.get("/v2/health/ready", response_model=Ready, responses=_NOT_READY)
async def ready(request: Request) -> Response:
    """200 once the default model and every version a collection needs serve; else 400."""
    reason = request.app.state.readiness()
    return _answer_not_ready(reason) if reason else JSONResponse({"ready": True})


@router.get("/v2/models/{name}", response_model=ModelMetadata)
@router.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata)
async def model_metadata(name: str, kserve: KServeDep, version: str = "") -> ModelMetadata:
    """The model's loaded versions, its inputs (`image`, `text`: BYTES [-1], as its towers
    allow) and its output (`embedding`: FP32 [-1, dim])."""
    found = kserve.model_metadata(name, version)
    return ModelMetadata(
        name=found.name,
        versions=found.versions,
        platform=found.platform,
        inputs=[_tensor(t) for t in found.inputs],
        outputs=[_tensor(t) for t in found.outputs],
    )


def _tensor(spec: TensorSpec) -> TensorMetadata:
    return TensorMetadata(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


@router.get("/v2/models/{name}/ready", response_model=Ready, responses=_NOT_READY)
@router.get(
    "/v2/models/{name}/versions/{version}/ready", response_model=Ready, responses=_NOT_READY
)
async def model_ready(name: str, kserve: KServeDep, version: str = "") -> Response:
    """200 while the model has a serving version (or the version named is loaded); 400 with
    the reason when not; 404 for a model or version the repository lacks."""
    is_ready, reason = kserve.model_ready(name, version)
    return JSONResponse({"ready": True}) if is_ready else _answer_not_ready(reason)


# -- inference -------------------------------------------------------------------------------


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(InferRequest.model_json_schema())},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"The JSON header ({HEADER_LENGTH} bytes), then binary tensors",
            },
        },
    }
}


@router.post(
    "/v2/models/{name}/infer",
    response_model=InferResponse,
    openapi_extra=_INFER_BODY,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    response_model=InferResponse,
    openapi_extra=_INFER_BODY,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def infer(name: str, request: Request, kserve: KServeDep, version: str = "") -> Response:
    """Embeds the `image` and `text` tensors' elements: `embedding` (FP32 [n, dim]), rows
    images first, then texts, in tensor order."""
    limit = kserve.embedding.config.limits.max_inputs_per_request
    body, tensors = read_request(await request.body(), request.headers.get(HEADER_LENGTH), limit)
    names, binary = outputs_of(body)
    inferred = await kserve.infer(name, version, tensors, names)
    return encode_answer(inferred, body.id, binary)


# -- the model repository extension ----------------------------------------------------------


@router.post("/v2/repository/index", response_model=list[IndexEntry])
async def repository_index(request: Request, kserve: KServeDep) -> list[IndexEntry]:
    """Every version of every model and its state (READY: loaded); `ready`: only those."""
    body = _optional(await request.body(), IndexRequest)
    return [
        IndexEntry(name=e.name, version=e.version, state=e.state, reason=e.reason)
        for e in kserve.repository_index(body.ready)
    ]


@router.post("/v2/repository/models/{name}/load", response_model=dict[str, Any])
async def load(name: str, request: Request, kserve: KServeDep) -> dict[str, Any]:
    """Loads the model's newest version, which serves where the model had none serving."""
    body = _optional(await request.body(), RepositoryRequest)
    await kserve.load(name, body.parameters)
    return {}


@router.post("/v2/repository/models/{name}/unload", response_model=dict[str, Any])
async def unload(name: str, request: Request, kserve: KServeDep) -> dict[str, Any]:
    """Unloads every version of the model; it serves no more until loaded again."""
    _optional(await request.body(), RepositoryRequest)  # unload_dependents: lens has none
    await kserve.unload(name)
    return {}


def _optional(body: bytes, model: type[M]) -> M:
    """A body that may be empty (Triton's clients send none for some calls)."""
    return parse(model, body or b"{}")
