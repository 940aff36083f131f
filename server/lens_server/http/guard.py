"""What every HTTP request passes before a route: its size, its content type, its client.

A pure ASGI middleware, so that it sees the body as it arrives: a body over the limit is
refused with 413 from its `Content-Length`, or as soon as the bytes received pass the limit,
never read whole; a body that is neither JSON nor (where a route takes uploads) multipart is
refused with 415. While the route runs, the connection is watched: when the client goes, the
route is cancelled, so its inputs leave the batcher's queue before they reach the model, as a
cancelled gRPC call's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lens_server.errors import TooLarge, UnsupportedMediaType, status_of

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Routes that take multipart/form-data uploads beside JSON (Immich's /predict: only that).
UPLOADS = re.compile(r"^/v1/(embed|classify|collections/[^/]+/search)$|^/predict$")
# Immich's machine learning (`lens_server.http.compat.immich`): its refusals are FastAPI's
# `{"detail": "..."}`. Weaviate's multi2vec-clip (`...compat.weaviate`): its Go client sends
# JSON with no content type, and reads refusals as `{"error": "..."}`.
IMMICH = re.compile(r"^/predict$")
WEAVIATE = re.compile(r"^/vectorize$")
# KServe v2 (`lens_server.http.kserve`): Triton's clients send no content type, and an
# inference body with binary tensors (a JSON header, then their bytes) as octet-stream; its
# refusals are KServe's `{"error": "..."}`.
KSERVE = re.compile(r"^/v2(/|$)")
KSERVE_INFER = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}


class Guard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._body(scope, headers, receive)
        except (TooLarge, UnsupportedMediaType) as e:
            await _refuse(send, e, scope["path"])
            return
        if body is None:  # the client left before its request arrived
            return
        await self._run(scope, body, receive, send)

    async def _body(self, scope: Scope, headers: dict[str, str], receive: Receive) -> bytes | None:
        limit = self.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"request body is {int(declared)} bytes, over the limit of {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if body and scope["method"] in _BODY_METHODS:
            _check_type(scope["path"], headers.get("content-type", ""))
        return body

    async def _run(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        delivered = False
        finished = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def sending(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        route = asyncio.ensure_future(self.app(scope, replay, sending))
        # The server answers http.disconnect once the client goes (or the response is done).
        watcher = asyncio.ensure_future(receive())
        await asyncio.wait({route, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not route.done() and not finished:
            log.info("%s %s: the client went away; request dropped", scope["method"], scope["path"])
            route.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await route


def _check_type(path: str, content_type: str) -> None:
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return
    if not media and WEAVIATE.match(path):
        return
    if KSERVE.match(path) and (
        not media or (media == "application/octet-stream" and KSERVE_INFER.match(path))
    ):
        return
    if media == "multipart/form-data" and UPLOADS.match(path):
        return
    takes = "application/json or multipart/form-data" if UPLOADS.match(path) else "application/json"
    if KSERVE_INFER.match(path):
        takes = "application/json or application/octet-stream (binary tensors)"
    raise UnsupportedMediaType(
        f"content type {media or 'none'!r} is not supported here: send {takes}"
    )


async def _refuse(send: Send, error: BaseException, path: str) -> None:
    status, message, kind = status_of(error)
    if KSERVE.match(path) or WEAVIATE.match(path):
        body = json.dumps({"error": message})
    elif IMMICH.match(path):
        body = json.dumps({"detail": message})
    else:
        body = json.dumps({"error": {"message": message, "type": kind, "code": status.http}})
    await send(
        {
            "type": "http.response.start",
            "status": status.http,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})
