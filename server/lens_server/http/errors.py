"""The HTTP boundary: every error leaves a route as a JSON body with its status.

Bodies are shaped as OpenAI shapes its errors, `{"error": {"message", "type", "code"}}`,
with the status from the one table in `lens_server.errors`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from lens_server.errors import LensError, Overloaded, status_of

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_response(status: int, message: str, kind: str) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=kind, code=status))
    return JSONResponse(body.model_dump(), status_code=status)


def lens_error(error: BaseException, where: str) -> JSONResponse:
    status, message, kind = status_of(error)
    if status.http >= 500:
        log.error("%s failed", where, exc_info=error)
    else:
        log.info("%s: %d: %s", where, status.http, message)
    response = error_response(status.http, message, kind)
    if isinstance(error, Overloaded):
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


def validation_message(error: RequestValidationError) -> str:
    """What was wrong with the request, naming each bad field as `body.input[2]`."""
    parts = []
    for e in error.errors():
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx", {})
            parts.append(f"malformed JSON: {ctx.get('error', e.get('msg'))}")
            continue
        where = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in e.get("loc", ()))
        parts.append(f"{where.replace('.[', '[')}: {e.get('msg')}")
    return "; ".join(parts) or "the request is not valid"


def install(app: FastAPI) -> None:
    """The app's handlers: LensError by its table, validation as 400, the rest as 500; and
    the schema says so (FastAPI documents validation errors as 422 by default)."""
    _openapi_without_422(app)

    @app.exception_handler(LensError)
    async def _lens(request: Request, error: LensError) -> JSONResponse:
        return lens_error(error, f"{request.method} {request.url.path}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_message(error), "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        response = error_response(error.status_code, str(error.detail), kind)
        for key, value in (error.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception) -> JSONResponse:
        return lens_error(error, f"{request.method} {request.url.path}")


def _openapi_without_422(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI keeps it as app.openapi_schema
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


# Error statuses every route may answer, for the OpenAPI schema.
RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Bad input; the message names it"),
        (401, "An API key is required (Authorization: Bearer KEY) and none valid was sent"),
        (403, "The API key lacks the scope this route needs; the message names it"),
        (
            404,
            "Unknown model, version, collection or classifier; the message lists those that exist",
        ),
        (409, "Conflict with the server's state"),
        (413, "Request body over the size limit"),
        (415, "Unsupported content type"),
        (429, "A queue is full, or the client is over its limits; retry after Retry-After s"),
        (503, "Not ready or shutting down"),
    )
}
