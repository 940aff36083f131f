"""Metrics over HTTP: `GET /metrics` (the exposition, where it is served on the HTTP port),
and the request metrics and request log of the HTTP front door, a pure ASGI middleware
outside the guard and the key check, so that what they refuse (401, 413, 415) is counted
and logged too.

Each request is counted and timed by its route template (`/v1/collections/{name}/search`,
never the path a client sent: labels stay few), the model that served it and its status;
the body bytes received are counted as they arrive. A request whose client left before an
answer was sent counts under 499, as proxies log it. Each request gets its id (the client's
`X-Request-Id` header, or one made), answered in the `X-Request-Id` response header, and
one log line when it ends (`lens_server.logs`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.routing import BaseRoute, Match

from lens_server import logs
from lens_server import metrics as metering
from lens_server.access.scopes import HTTP, OPEN
from lens_server.http.guard import ASGIApp, Message, Receive, Scope, Send
from lens_server.metrics import Metrics

_REQUEST_ID = logs.REQUEST_ID.encode()

# The status of a request whose client went away before its answer (as nginx logs it).
CLIENT_LEFT = 499

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def exposition(request: Request) -> Response:
    """Every metric of the server in Prometheus's text format."""
    metrics: Metrics = request.app.state.metrics
    return Response(await metrics.scrape(), media_type=CONTENT_TYPE_LATEST)


class Metered:
    """Every HTTP request metered (where `metrics` are recorded) and logged."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = _flat(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, received = CLIENT_LEFT, 0
        sent_id = next((v for k, v in scope["headers"] if k.lower() == _REQUEST_ID), None)
        request_id = logs.request_id(sent_id)
        id_header = (_REQUEST_ID, request_id.encode())

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        with metering.call() as call:
            call.request_id = request_id
            try:
                await self.app(scope, counting, sending)
            finally:
                route = self._template(scope)
                seconds = time.perf_counter() - started
                if self.metrics is not None:
                    self.metrics.request("http", route, call.model, str(status), seconds)
                    if received:
                        self.metrics.received.labels("http", route).inc(received)
                method = "GET" if scope["method"] == "HEAD" else scope["method"]
                client = scope.get("client")
                peer = client[0] if client else "unknown"
                quiet = HTTP.get((method, route)) == OPEN  # probes, scrapes, the schema
                logs.request(call, "http", f"{method} {route}", status, seconds, peer, quiet)

    def _template(self, scope: Scope) -> str:
        """The route template the request went to; where routing never ran (the guard
        refused it first) the one it would have gone to; 'other' for no route."""
        route: Any = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] == Match.FULL), None)
        return getattr(route, "path", None) or "other"


def _flat(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The app's routes one by one: FastAPI keeps those of an included router behind one entry
    (its `original_router`)."""
    flat: list[BaseRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        flat.extend(_flat(inner.routes) if inner is not None else [route])
    return flat
