"""Health over HTTP: `/health` (serving), `/health/live`, `/health/ready`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

router = APIRouter(tags=["Health"])


class Health(BaseModel):
    status: str
    reason: str = ""


# What the server says it is: "" when serving, else why not (set by the server).
Readiness = Callable[[], str]


def _answer(reason: str) -> JSONResponse:
    body = Health(status="not serving" if reason else "serving", reason=reason)
    return JSONResponse(body.model_dump(), status_code=503 if reason else 200)


_DOC: dict[int | str, dict[str, Any]] = {
    503: {"model": Health, "description": "Not serving, with the reason"}
}


@router.get("/health", response_model=Health, responses=_DOC)
async def health(request: Request) -> JSONResponse:
    """200 while the server serves; 503 with the reason otherwise (starting, shutting down)."""
    return _answer(request.app.state.readiness())


@router.get("/health/live", response_model=Health)
async def live() -> Health:
    """200 as long as the process answers."""
    return Health(status="live")


@router.get("/health/ready", response_model=Health, responses=_DOC)
async def ready(request: Request) -> JSONResponse:
    """200 once the default model and every version a collection is pinned to have loaded."""
    return _answer(request.app.state.readiness())
