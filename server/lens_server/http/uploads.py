"""Routes that take JSON or a multipart upload (`curl -F image=@cat.jpg`): one parser, and
the OpenAPI request body that documents both."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from lens_server.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)


def openapi_body(model: type[BaseModel], form: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route whose body is `model` as JSON or the `form` fields."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": form}},
            },
        }
    }


async def parse(
    request: Request, model: type[M], files: str = "image", lists: tuple[str, ...] = ()
) -> tuple[M, list[bytes]]:
    """The body as `model`, and the uploaded files of the form field `files` (none for
    JSON). Form fields named in `lists` may repeat and become lists; the others are single
    values (pydantic reads `k=5` as the number 5)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        form = await request.form()
        uploads: list[bytes] = []
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != files:
                    raise InvalidInput(f"form field {key!r}: files go in {files!r}")
                uploads.append(await value.read())
            elif key in lists:
                fields.setdefault(key, []).append(value)
            else:
                fields[key] = value
        try:
            return model.model_validate(fields), uploads
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None
    try:
        raw = await request.body()
        return model.model_validate_json(raw or b"{}"), []
    except ValidationError as e:
        raise RequestValidationError(_as_body(e)) from None


def _as_body(error: ValidationError) -> list[Any]:
    return [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
