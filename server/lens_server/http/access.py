"""The HTTP side of the gate: two pure ASGI middlewares over `lens_server.access.gate`, so no
route checks keys or limits by itself.

`Authenticate`, in front of everything, finds the route's scope in the one table, reads the
`Authorization: Bearer KEY` header (what the OpenAI SDK sends as its `api_key`) and refuses
with 401 or 403 before the body is read. `Admit`, behind the guard (which has read the body
by then, within its size limit), counts the request against its client's limits and
refuses with 429 and `Retry-After`. Inputs are counted from the body as it is, without
validating it: in JSON, the entries of `input`, `inputs`, `text`, `texts` (Weaviate's),
`images`, `items` and `queries` (a string is one) and a `query` (one); in a multipart
upload, its files and `text` fields. The body is only parsed for this when an inputs limit is set.
"""

from __future__ import annotations

import json
import re

from lens_server.access.gate import Gate
from lens_server.access.scopes import OPEN, http_scope
from lens_server.errors import LensError, Unauthenticated
from lens_server.http.errors import lens_error
from lens_server.http.guard import ASGIApp, Message, Receive, Scope, Send

# Where the caller `Authenticate` found waits for `Admit`, in the request's ASGI scope.
CALLER = "lens.caller"

_COUNTED = ("input", "inputs", "text", "texts", "images", "items", "queries")
_PART = re.compile(rb'content-disposition:[^\r\n]*?name="([^"]*)"([^\r\n]*)', re.IGNORECASE)


class Authenticate:
    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        route, needed = http_scope(method, path) or (path, None)
        if needed == OPEN:
            await self.app(scope, receive, send)
            return
        authorization = ""
        for name, value in scope["headers"]:
            if name.lower() == b"authorization":
                authorization = value.decode("latin-1")
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        try:
            scope[CALLER] = self.gate.identify(f"{method} {route}", needed, authorization, peer)
        except LensError as e:
            await refuse(scope, receive, send, e)
            return
        await self.app(scope, receive, send)


class Admit:
    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller = scope.get(CALLER)
        if scope["type"] != "http" or caller is None:
            await self.app(scope, receive, send)
            return
        inputs = 0
        if self.gate.limits.limits.inputs_per_s:
            first = await receive()
            inputs = count_inputs(first.get("body", b""), _content_type(scope))
            receive = _replay(first, receive)
        try:
            self.gate.admit(caller, inputs)
        except LensError as e:
            await refuse(scope, receive, send, e)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.release(caller)


def count_inputs(body: bytes, content_type: str) -> int:
    """The inputs a request body carries, as the module says; 0 for what it cannot read."""
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        parts = _PART.findall(body)
        return sum(1 for name, rest in parts if name == b"text" or b"filename=" in rest)
    try:
        document = json.loads(body) if body else None
    except ValueError:
        return 0  # the route answers 400
    if not isinstance(document, dict):
        return 0
    count = 0
    for name in _COUNTED:
        value = document.get(name)
        count += len(value) if isinstance(value, list) else int(isinstance(value, str))
    return count + int(isinstance(document.get("query"), dict))


async def refuse(scope: Scope, receive: Receive, send: Send, error: LensError) -> None:
    """The error as every route answers it (its status, the JSON body, `Retry-After`)."""
    response = lens_error(error, f"{scope['method']} {scope['path']}")
    if isinstance(error, Unauthenticated):
        response.headers["WWW-Authenticate"] = "Bearer"
    await response(scope, receive, send)


def _content_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name.lower() == b"content-type":
            return str(value.decode("latin-1"))
    return ""


def _replay(first: Message, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return first
        return await receive()

    return replay
