"""The ASGI app: the routers, the error handlers, and in front of them the gate's key check,
the guard, and the gate's limits (`lens_server.http.access`)."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI

from lens_server.access.gate import Gate
from lens_server.core import Core
from lens_server.http import (
    browse,
    classify,
    collections,
    embed,
    errors,
    health,
    kserve,
    metering,
    models,
    openai,
    search,
    web,
)
from lens_server.http import compat as compat_apis
from lens_server.http.access import Admit, Authenticate
from lens_server.http.fetch import FetchConfig, Fetcher
from lens_server.http.guard import ASGIApp, Guard
from lens_server.http.health import Readiness
from lens_server.http.starting import Starting
from lens_server.lifecycle import Lifecycle
from lens_server.metrics import Metrics


def build_app(
    core: Core,
    readiness: Readiness,
    max_body_bytes: int,
    fetch: FetchConfig | None = None,
    gate: Gate | None = None,
    metrics: Metrics | None = None,
    expose_metrics: bool = True,
    compat: tuple[str, ...] = ("kserve",),
    aliases: Mapping[str, str] | None = None,
    weaviate_model: str = "",
    lifecycle: Lifecycle | None = None,
) -> ASGIApp:
    """The HTTP API over `core`; `readiness()` says why the server is not serving ('' when
    it is). With a `gate`, a request's key is checked before the guard reads its body, and
    its limits once the guard has. With `metrics`, every request is counted in front of all
    that (`metering`, which logs every request, metrics or not), and `expose_metrics`
    serves them at GET /metrics. Other apps' APIs are served where `compat` names them:
    KServe v2's (`lens_server.http.kserve`), and (`lens_server.http.compat`) Immich's with
    its model names mapped through `aliases`, Weaviate's through `weaviate_model`. With a
    `lifecycle`, routes that are not open answer 503 while the server loads its models
    (`lens_server.http.starting`)."""
    app = FastAPI(
        title="lens",
        summary="Image and text embeddings, zero-shot classification and vector search.",
        version="1",
    )
    app.state.core = core
    app.state.readiness = readiness
    app.state.fetcher = Fetcher(fetch or FetchConfig())
    errors.install(app)
    for module in (openai, embed, classify, collections, search, browse, models, health, web):
        app.include_router(module.router)
    if "kserve" in compat:
        app.include_router(kserve.router)
    for router in compat_apis.routers(compat, aliases or {}, weaviate_model):
        app.include_router(router)
    app.state.metrics = metrics
    if metrics and expose_metrics:
        app.include_router(metering.router)
    guarded: ASGIApp = (
        Guard(app, max_body_bytes)
        if gate is None
        else Authenticate(Guard(Admit(app, gate), max_body_bytes), gate)
    )
    if lifecycle is not None:
        guarded = Starting(guarded, lifecycle)
    return metering.Metered(guarded, metrics, app.routes)  # logs requests, metrics or not
