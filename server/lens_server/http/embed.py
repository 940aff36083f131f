"""`POST /v1/embed`: images and texts in one request, as `lens.v1.Inference/Embed`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lens_server.core import Core
from lens_server.http.codec import encode_codes, encode_vectors, model_ref
from lens_server.http.errors import RESPONSES
from lens_server.http.fetch import Fetcher
from lens_server.http.state import core_of, fetcher_of
from lens_server.http.uploads import openapi_body, parse
from lens_server.model import Input
from lens_server.vectors import ENCODINGS, quantize

router = APIRouter(tags=["Inference"], responses=RESPONSES)

EncodingFormat = Literal["float", "base64"]
Encoding = Literal["float32", "int8", "uint8", "binary", "ubinary"]


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
    encoding: Encoding = Field(
        default="float32",
        description="float32, or codes as sentence-transformers' quantize_embeddings gives "
        "them: int8/uint8 (each dimension from this request's [min, max], given back as "
        "`ranges`, to 256 steps) or binary/ubinary (sign bits packed eight to a byte; int8 "
        "= byte - 128). With encoding_format base64, each row's bytes.",
    )
    ranges: list[list[float]] | None = Field(
        default=None,
        description="int8/uint8: [minimums, maximums] to map (e.g. a first response's), so "
        "that codes of several requests agree; none: this request's own.",
    )


class EmbedResponse(BaseModel):
    model: str
    version: int
    dim: int
    # One per input, in input order (uploaded files first, then `text` fields).
    embeddings: Sequence[list[float] | list[int] | str]
    encoding: Encoding = "float32"
    # int8 / uint8: [minimums (dim), maximums (dim)] the codes map.
    ranges: list[list[float]] | None = None


FORM = {
    "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "text": {"type": "array", "items": {"type": "string"}},
    "model": {"type": "string"},
    "encoding_format": {"type": "string", "enum": ["float", "base64"]},
    "encoding": {"type": "string", "enum": list(ENCODINGS)},
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
    embeddings: Sequence[list[float] | list[int] | str]
    if body.encoding == "float32":
        embeddings = encode_vectors(embedded.vectors, body.encoding_format)
        ranges = None
    else:
        given = None
        if body.ranges is not None:
            given = np.asarray([x for row in body.ranges for x in row], np.float32)
        codes, found = quantize(embedded.vectors, body.encoding, given)
        embeddings = encode_codes(codes, body.encoding_format)
        ranges = None if found is None else found.tolist()
    return EmbedResponse(
        model=embedded.model,
        version=embedded.version,
        dim=embedded.vectors.shape[1],
        embeddings=embeddings,
        encoding=body.encoding,
        ranges=ranges,
    )
