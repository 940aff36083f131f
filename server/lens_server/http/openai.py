"""OpenAI-compatible embeddings: `POST /v1/embeddings`, as the OpenAI SDK calls it.

Texts by default; images where `modality` is `image` (the SDK sends it through
`extra_body`) or where an input is a `data:image/...` URI, as Infinity takes them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lens_server.core import Core
from lens_server.errors import InvalidInput
from lens_server.http.codec import encode_vectors, is_image_uri, model_ref
from lens_server.http.errors import RESPONSES
from lens_server.http.fetch import Fetcher
from lens_server.http.state import core_of, fetcher_of
from lens_server.model import Input

router = APIRouter(tags=["OpenAI"], responses=RESPONSES)


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(
        description="A text or a list of texts (or images: base64, or data:image/... URIs)."
    )
    model: str | None = Field(
        default=None, description="NAME or NAME:VERSION; none: the default model."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        default=None,
        description="Truncate to this many dimensions and re-normalise (nested models).",
    )
    user: str | None = None
    modality: Literal["text", "image"] = "text"

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, value: object) -> object:
        # OpenAI also takes token ids (a list of ints, or of lists of ints); lens tokenizes
        # with the model's own tokenizer, so ids made by another would mean other words.
        if isinstance(value, list) and any(type(v) is int or isinstance(v, list) for v in value):
            raise ValueError("token ids are not accepted: send the texts themselves")
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


@router.post("/v1/embeddings", response_model=EmbeddingsResponse)
async def embeddings(
    body: EmbeddingsRequest,
    core: Annotated[Core, Depends(core_of)],
    fetcher: Annotated[Fetcher, Depends(fetcher_of)],
) -> EmbeddingsResponse:
    texts = [body.input] if isinstance(body.input, str) else body.input
    inputs: list[Input] = []
    for i, item in enumerate(texts):
        where = f"input[{i}]"
        if body.modality == "image" or is_image_uri(item):
            inputs.append(await fetcher.image(item, where))
        else:
            inputs.append(item)
    name, version = model_ref(body.model)
    if body.dimensions is not None and body.dimensions < 1:
        raise InvalidInput(f"dimensions must be >= 1, got {body.dimensions}")
    words = [t for t in inputs if isinstance(t, str)]
    # One version for the vectors and their token count: a deploy between the two must not
    # retire the version that embedded them.
    with core.embedding.hold(name, version) as held:
        embedded = await core.embedding.embed(inputs, pinned=held, dimensions=body.dimensions or 0)
        tokens = sum(core.embedding.token_counts(words, pinned=held)) if words else 0
    vectors = encode_vectors(embedded.vectors, body.encoding_format)
    return EmbeddingsResponse(
        data=[Embedding(index=i, embedding=v) for i, v in enumerate(vectors)],
        model=f"{embedded.model}:{embedded.version}",
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )
