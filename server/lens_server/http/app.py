"""The ASGI app: the routers, the error handlers, and the guard in front of them."""

from __future__ import annotations

from fastapi import FastAPI

from lens_server.core import Core
from lens_server.http import (
    classify,
    collections,
    embed,
    errors,
    health,
    models,
    openai,
    search,
)
from lens_server.http.fetch import FetchConfig, Fetcher
from lens_server.http.guard import Guard
from lens_server.http.health import Readiness


def build_app(
    core: Core,
    readiness: Readiness,
    max_body_bytes: int,
    fetch: FetchConfig | None = None,
) -> Guard:
    """The HTTP API over `core`; `readiness()` says why the server is not serving ('' when
    it is)."""
    app = FastAPI(
        title="lens",
        summary="Image and text embeddings, zero-shot classification and vector search.",
        version="1",
    )
    app.state.core = core
    app.state.readiness = readiness
    app.state.fetcher = Fetcher(fetch or FetchConfig())
    errors.install(app)
    for module in (openai, embed, classify, collections, search, models, health):
        app.include_router(module.router)
    return Guard(app, max_body_bytes)
