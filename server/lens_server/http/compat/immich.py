"""Immich's machine-learning API, its CLIP task (smart search): `GET /ping` and
`POST /predict`, so that an Immich server's `MACHINE_LEARNING_URL` can be lens.

Immich sends one input a request, as a multipart form: `entries`, a JSON object naming the
task, the model type and Immich's name of the model (`{"clip": {"visual": {"modelName":
"ViT-B-32__openai"}}}`, or `textual` with `"options": {"language": ...}`), and an `image`
file or a `text` field. It reads back `{"clip": "<the vector as a JSON array, in a string>"}`,
with `imageHeight` and `imageWidth` for an image. Immich's model names reach lens models
through aliases (`lens serve --alias ViT-B-32__openai=MODEL`), or name a lens model itself;
any other name is refused, naming the models and aliases there are. Errors are FastAPI's
`{"detail": "..."}`, as Immich's service answers them. Matched against Immich's source;
docs/compat.md gives the version and the lines.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse
from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from lens_server.core import Core
from lens_server.errors import InvalidInput, NotFound, available
from lens_server.http.codec import model_ref
from lens_server.http.compat.errors import shaped
from lens_server.http.state import core_of
from lens_server.model import Input

TASK = "clip"  # Immich's ModelTask.SEARCH
# Immich's ModelType of each CLIP tower → the form field holding its input.
TOWERS = {"visual": "image", "textual": "text"}


class Prediction(BaseModel):
    """What Immich reads of a CLIP prediction."""

    clip: str
    imageHeight: int | None = None  # Immich's names
    imageWidth: int | None = None


class Detail(BaseModel):
    detail: str


@dataclass(frozen=True)
class Entry:
    """The one CLIP model a request asks for: Immich's name of it and its type."""

    model: str
    type: str  # "visual" or "textual"


FORM = {
    "entries": {"type": "string", "description": 'e.g. {"clip": {"visual": {"modelName": ...}}}'},
    "image": {"type": "string", "format": "binary"},
    "text": {"type": "string"},
}


def router(aliases: Mapping[str, str]) -> APIRouter:
    """The routes, with `aliases` mapping Immich's model names to `NAME[:VERSION]`."""
    api = APIRouter(
        tags=["Immich"],
        route_class=shaped(lambda status, message: {"detail": message}),
        responses={s: {"model": Detail} for s in (400, 404, 409, 413, 422, 429, 503)},
    )

    @api.get("/ping", response_class=PlainTextResponse)
    async def ping() -> str:
        """`pong` while the process answers (what Immich's health check asks)."""
        return "pong"

    @api.post(
        "/predict",
        response_model=Prediction,
        response_model_exclude_none=True,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": {"type": "object", "properties": FORM}}
                },
            }
        },
    )
    async def predict(request: Request, core: Annotated[Core, Depends(core_of)]) -> Prediction:
        """One image or text through the CLIP model `entries` names, as Immich asks."""
        form = await request.form()
        entry = parse_entries([v for v in form.getlist("entries") if isinstance(v, str)])
        item = await _input(entry, form.getlist("image"), form.getlist("text"))
        target = aliases.get(entry.model)
        name, version = model_ref(target) if target else (entry.model, 0)
        try:
            embedded = await core.embedding.embed([item], name, version)
        except NotFound as e:
            how = (
                f"--alias {entry.model}={target}"
                if target
                else "no --alias names it and no lens model has that name"
            )
            names = [f"{k}={v}" for k, v in sorted(aliases.items())]
            raise NotFound(
                f"Immich model {entry.model!r} ({how}): {e} {available('aliases', names)}"
            ) from None
        if isinstance(item, str):
            return Prediction(clip=vector_text(embedded.vectors[0]))
        width, height = _size(item)
        return Prediction(
            clip=vector_text(embedded.vectors[0]), imageHeight=height, imageWidth=width
        )

    return api


def parse_entries(values: list[str]) -> Entry:
    """The `entries` field → the one CLIP entry lens serves; 422 (as Immich answers a bad
    `entries`) for anything else, saying what was expected."""
    if len(values) != 1:
        found = "missing" if not values else f"given {len(values)} times"
        raise HTTPException(422, f"the form field 'entries' is {found}: send it once")
    try:
        request = json.loads(values[0])
    except ValueError as e:
        raise HTTPException(422, f"Invalid request format: entries is not JSON ({e})") from None
    example = '{"clip": {"visual": {"modelName": "ViT-B-32__openai"}}}'
    if not isinstance(request, dict) or not all(isinstance(t, dict) for t in request.values()):
        raise HTTPException(
            422, f"Invalid request format: entries maps a task to its model types, as {example}"
        )
    if others := sorted(set(request) - {TASK}):
        raise HTTPException(
            422,
            f"lens serves Immich's clip task (smart search) only, not {', '.join(others)}: "
            "turn those jobs off in Immich's machine-learning settings",
        )
    types: dict[str, Any] = request.get(TASK, {})
    if len(types) != 1 or next(iter(types)) not in TOWERS:
        raise HTTPException(
            422,
            f"Invalid request format: entries.clip names one model type, visual or textual "
            f"(got {sorted(types) or 'none'}), as {example}",
        )
    ((kind, entry),) = types.items()
    name = entry.get("modelName") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        raise HTTPException(
            422, f"Invalid request format: entries.clip.{kind}.modelName is missing"
        )
    # `options.language` (textual) picks a multilingual model's language; lens's text towers
    # take text as it is, so it is read and not used.
    return Entry(name, kind)


async def _input(entry: Entry, images: list[Any], texts: list[Any]) -> Input:
    """The request's one input, the kind its entry's model type embeds."""
    if not images and not texts:
        raise InvalidInput("Either image or text must be provided: send an 'image' file part")
    if len(images) + len(texts) > 1:
        raise InvalidInput(
            f"{len(images)} image(s) and {len(texts)} text(s) given: Immich sends one input a "
            "request, an 'image' file part or a 'text' field"
        )
    wanted = TOWERS[entry.type]
    if (wanted == "image" and not images) or (wanted == "text" and not texts):
        raise InvalidInput(
            f"entries ask for clip {entry.type}, which embeds "
            + (
                "an image: send it as an 'image' file part"
                if wanted == "image"
                else "a text: send it as a 'text' field"
            )
        )
    if texts:
        return str(texts[0])
    if not isinstance(images[0], UploadFile):
        raise InvalidInput("the 'image' form field is not a file: send it as a file part")
    return await images[0].read()


def vector_text(vector: np.ndarray) -> str:
    """A (dim,) float32 vector as the JSON array Immich stores as it is (each float32 in its
    shortest form, as Immich's own service writes it with orjson)."""
    return "[" + ",".join(str(x) for x in vector.astype(np.float32)) + "]"


def _size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image as Pillow opens it, EXIF orientation not applied
    (Immich reports the size of the image it decoded, which it does not turn either)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError) as e:
        raise InvalidInput(f"image could not be decoded: {e}") from None
