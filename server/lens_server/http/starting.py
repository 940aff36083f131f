"""The HTTP side of `lens_server.lifecycle`: while the server loads its models, a request to
a route that is not open is answered 503 (in lens's error shape) before the body is read."""

from __future__ import annotations

from lens_server.access.scopes import OPEN, http_scope
from lens_server.http.access import refuse
from lens_server.http.guard import ASGIApp, Receive, Scope, Send
from lens_server.lifecycle import Lifecycle


class Starting:
    """Refuses every route but the open ones (health, metrics, the schema) until the server
    has loaded; a path that is no route goes on to its 404."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.lifecycle.loaded:
            method, path = scope["method"], scope["path"]
            found = http_scope(method, path)
            if found is not None and found[1] != OPEN:
                refusal = self.lifecycle.refusal(f"{method} {found[0]}")
                if refusal is not None:
                    await refuse(scope, receive, send, refusal)
                    return
        await self.app(scope, receive, send)
