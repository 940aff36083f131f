"""Errors of a compat router in its own app's shape.

FastAPI's exception handlers are the app's, and answer lens's shape (`lens_server.http.errors`);
a compat router instead gets a route class (`shaped`) that catches what its routes raise,
request validation included, and answers with the app's body. Statuses come from the one
table in `lens_server.errors`, except HTTPException's own and 422 for a request that is not
what the app's contract says (as the FastAPI services these apps talk to answer it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from lens_server.errors import Overloaded, status_of
from lens_server.http.errors import validation_message

log = logging.getLogger(__name__)

# (HTTP status, message) → the app's JSON error body.
Shape = Callable[[int, str], dict[str, Any]]


def shaped(shape: Shape) -> type[APIRoute]:
    """A route class whose routes answer every error as `shape(status, message)`."""

    class ShapedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handler(request)
                except asyncio.CancelledError:
                    raise
                except HTTPException as e:
                    return _answer(shape, e.status_code, str(e.detail), e.headers)
                except RequestValidationError as e:
                    return _answer(shape, 422, validation_message(e))
                except Exception as e:  # the boundary: every error leaves in the app's shape
                    return _failed(shape, e, f"{request.method} {request.url.path}")

            return route

    return ShapedRoute


def _failed(shape: Shape, error: Exception, where: str) -> JSONResponse:
    status, message, _ = status_of(error)
    if status.http >= 500:
        log.error("%s failed", where, exc_info=error)
    else:
        log.info("%s: %d: %s", where, status.http, message)
    headers = {"Retry-After": str(error.retry_after_s)} if isinstance(error, Overloaded) else None
    return _answer(shape, status.http, message, headers)


def _answer(
    shape: Shape, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(shape(status, message), status_code=status, headers=headers)
