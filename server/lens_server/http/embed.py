"""`POST /v1/embed`: images and texts in one request, as `lens.v1.Inference/Embed`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lens_server.core import Core
from lens_server.http.codec import encode_vectors, model_ref
from lens_server.http.errors import RESPONSES
from lens_server.http.fetch import Fetcher
from lens_server.http.state import core_of, fetcher_of
from lens_server.http.uploads import openapi_body, parse
from lens_server.model import Input

router = APIRouter(tags=["Inference"], responses=RESPONSES)

EncodingFormat = Literal["float", "base64"]


class InputItem(BaseModel):
    """One input: `text`, or `image` (base64 or a data:image/... URI)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = None

    @model_validator(mode="after")
    def _one(self) -> InputItem:
        if (self.text is None) == (self.image is None):
            raise ValueError("give exactly one of text or image")
        return self


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[InputItem] = Field(default_factory=list)
    # Multipart uploads: texts as repeated `text` fields beside the `image` files.
    text: list[str] = Field(default_factory=list)
    model: str | None = Field(default=None, description="NAME or NAME:VERSION; none: the default.")
    encoding_format: EncodingFormat = "float"


class EmbedResponse(BaseModel):
    model: str
    version: int
    dim: int
    # One per input, in input order (uploaded files first, then `text` fields).
    embeddings: list[list[float] | str]


FORM = {
    "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "text": {"type": "array", "items": {"type": "string"}},
    "model": {"type": "string"},
    "encoding_format": {"type": "string", "enum": ["float", "base64"]},
}


@router.post(
    "/v1/embed", response_model=EmbedResponse, openapi_extra=openapi_body(EmbedRequest, FORM)
)
async def embed(
    request: Request,
    core: Annotated[Core, Depends(core_of)],
    fetcher: Annotated[Fetcher, Depends(fetcher_of)],
) -> EmbedResponse:
    body, files = await parse(request, EmbedRequest, lists=("text",))
    inputs: list[Input] = list(files)
    for i, item in enumerate(body.inputs):
        inputs.append(
            item.text
            if item.text is not None
            else await fetcher.image(item.image or "", f"inputs[{i}].image")
        )
    inputs.extend(body.text)
    name, version = model_ref(body.model)
    embedded = await core.embedding.embed(inputs, name, version)
    return EmbedResponse(
        model=embedded.model,
        version=embedded.version,
        dim=embedded.vectors.shape[1],
        embeddings=encode_vectors(embedded.vectors, body.encoding_format),
    )
