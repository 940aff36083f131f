"""The inference API of Weaviate's `multi2vec-clip` module, so that a Weaviate whose
`CLIP_INFERENCE_API` is lens vectorizes through it: `GET /.well-known/live`,
`GET /.well-known/ready`, `GET /meta`, `POST /vectorize`.

Weaviate sends `{"texts": [...], "images": [base64, ...]}` (as JSON, without a content type)
and reads `{"textVectors": [[...]], "imageVectors": [[...]]}`, one vector per input in input
order, or `{"error": "..."}` with a status of 400 or more. It waits for `/.well-known/ready`
to answer 2xx before it starts. One lens model serves these routes: the default model, or
the one `lens serve --weaviate-model NAME[:VERSION]` names. Matched against Weaviate's Go
client and the reference inference container; docs/compat.md gives the lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lens_server.core import Core
from lens_server.core.models import facts
from lens_server.errors import InvalidInput, LensError
from lens_server.http.codec import image_bytes, model_ref
from lens_server.http.compat.errors import shaped
from lens_server.http.health import Readiness
from lens_server.http.state import core_of
from lens_server.model import Input, LoadedVersion

CoreDep = Annotated[Core, Depends(core_of)]


class VectorizeRequest(BaseModel):
    # Fields Weaviate does not send are ignored, as the reference container ignores them.
    model_config = ConfigDict(extra="ignore")

    texts: list[str] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list, description="Encoded images, base64.")

    @field_validator("texts", "images", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value  # Go marshals a nil slice as null


class VectorizeResponse(BaseModel):
    textVectors: list[list[float]]  # the module's names
    imageVectors: list[list[float]]


class Error(BaseModel):
    error: str


def router(model: str = "") -> APIRouter:
    """The routes, serving `model` (`NAME[:VERSION]`; '': the default model)."""
    name, version = model_ref(model)
    api = APIRouter(
        tags=["Weaviate"],
        route_class=shaped(lambda status, message: {"error": message}),
        responses={s: {"model": Error} for s in (400, 404, 409, 413, 422, 429, 503)},
    )

    @api.get("/.well-known/live", status_code=204, response_class=Response)
    async def live() -> Response:
        """204 as long as the process answers."""
        return Response(status_code=204)

    @api.get(
        "/.well-known/ready",
        status_code=204,
        response_class=Response,
        responses={503: {"model": Error, "description": "Not serving, with the reason"}},
    )
    async def ready(request: Request, core: CoreDep) -> Response:
        """204 once the server serves and the model these routes use has a serving version;
        503 with the reason until then (Weaviate waits for 2xx before it starts)."""
        readiness: Readiness = request.app.state.readiness
        reason = readiness() or _not_serving(core, name)
        if reason:
            return JSONResponse(Error(error=reason).model_dump(), 503)
        return Response(status_code=204)

    @api.get("/meta")
    async def meta(core: CoreDep) -> dict[str, Any]:
        """What the model these routes use is (Weaviate shows it under its modules' meta)."""
        info = core.models.get(name or core.models.default_model or "")
        serving = [s for s in info.versions if s.version == info.serving_version]
        about = facts(serving[0]) if serving else None
        return {
            "model": info.name,
            "version": info.serving_version,
            "dim": info.dim,
            "modalities": list(info.modalities),
            "source": about.source if about else "",
            "image_size": about.image_size if about else 0,
            "context_length": about.context_length if about else 0,
            "server": "lens",
        }

    @api.post(
        "/vectorize",
        response_model=VectorizeResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": VectorizeRequest.model_json_schema()}},
            }
        },
    )
    async def vectorize(request: Request, core: CoreDep) -> VectorizeResponse:
        """Texts and base64 images through the model, in one version of it."""
        try:
            body = VectorizeRequest.model_validate_json(await request.body() or b"{}")
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None
        if not body.texts and not body.images:
            raise InvalidInput("texts and images are both empty: send at least one")
        images: list[Input] = [image_bytes(b, f"images[{i}]") for i, b in enumerate(body.images)]
        texts: list[Input] = list(body.texts)
        core.embedding.check(texts + images)  # the count over both, and each text's length
        with core.embedding.hold(name, version) as loaded:
            # Both towers at once, through the one version held (a deploy between the two
            # calls would otherwise mix versions in one object's vector).
            found = await asyncio.gather(
                _embed(core, texts, loaded, "texts"),
                _embed(core, images, loaded, "images"),
                return_exceptions=True,
            )
        text_vectors, image_vectors = found
        if isinstance(text_vectors, BaseException):
            raise text_vectors
        if isinstance(image_vectors, BaseException):
            raise image_vectors
        return VectorizeResponse(textVectors=text_vectors, imageVectors=image_vectors)

    return api


async def _embed(
    core: Core, inputs: Sequence[Input], loaded: LoadedVersion, field: str
) -> list[list[float]]:
    if not inputs:
        return []
    try:
        embedded = await core.embedding.embed(inputs, pinned=loaded)
    except InvalidInput as e:  # "input 2: ..." is the field's third entry
        raise type(e)(f"{field}: {e}") from None
    return embedded.vectors.tolist()


def _not_serving(core: Core, name: str) -> str:
    """'' when `name` (the default model where '') has a serving version, else why not."""
    name = name or core.models.default_model
    if not name:
        return "no model to serve: start lens with --weaviate-model or --default-model"
    try:
        info = core.models.get(name)
    except LensError as e:
        return str(e)
    return "" if info.serving_version else f"model {name} is not serving"
