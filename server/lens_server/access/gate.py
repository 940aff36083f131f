"""What every call passes before it runs, on either front door: its key, its scope, its
client's limits. The gRPC interceptor (`lens_server.services.access`) and the HTTP
middleware (`lens_server.http.access`) only read the call's method, key and peer and hand
them here; no handler checks keys by itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lens_server.access.keys import ApiKeys
from lens_server.access.limits import Limiter
from lens_server.config import ClientLimits
from lens_server.errors import PermissionDenied, Unauthenticated
from lens_server.metrics import note_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who made a call: `id` is what its limits are counted by, `name` how messages to it
    call it ("this API key", or "client ADDRESS" where the server has no keys)."""

    id: str
    name: str


class Gate:
    """The key store and the limits of one server, shared by both front doors."""

    def __init__(self, keys: ApiKeys, limits: ClientLimits) -> None:
        self.keys = keys
        self.limits = Limiter(limits)

    def describe(self) -> str:
        """One start-up line: whether keys are required, and the limits per client."""
        limits = self.limits.limits
        parts = [
            f"{limits.requests_per_s:g} requests/s" if limits.requests_per_s else "",
            f"{limits.inputs_per_s:g} inputs/s" if limits.inputs_per_s else "",
            f"{limits.max_in_flight} in flight" if limits.max_in_flight else "",
        ]
        per = "API key" if self.keys.required else "client address"
        shown = ", ".join(p for p in parts if p) or "none"
        return f"access: {self.keys.describe()}; limits per {per}: {shown}"

    def identify(self, call: str, scope: str | None, authorization: str, peer: str) -> Caller:
        """The caller of `call` (a gRPC method or `METHOD /route`) that needs `scope` (None:
        a call the table does not know, which needs a key and no scope), from its
        `authorization` value ('' when none was sent) and its peer address. Raises
        Unauthenticated or PermissionDenied."""
        if not self.keys.required:
            return Caller(f"peer {peer}", f"client {peer}")
        if not authorization:
            raise Unauthenticated(f"{call} needs an API key: send 'authorization: Bearer KEY'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send the API key as 'authorization: Bearer KEY'")
        key = self.keys.authenticate(token.strip())
        note_client(f"key {key.source}")  # the request's log line names the entry, not the key
        if scope and scope not in key.scopes:
            log.info("%s refused: API key %s has no %r scope", call, key.source, scope)
            has = ", ".join(sorted(key.scopes))
            raise PermissionDenied(
                f"{call} needs the {scope!r} scope; this API key has only: {has}"
            )
        return Caller(f"key {key.source}", "this API key")

    def admit(self, caller: Caller, inputs: int) -> None:
        """Counts a request of `inputs` inputs, or raises RateLimited; `release` it after."""
        self.limits.admit(caller.id, caller.name, inputs)

    def pace(self, caller: Caller, inputs: int) -> float:
        """Seconds a stream's next message of `inputs` inputs must wait (0: it was counted)."""
        return self.limits.pace(caller.id, inputs)

    def release(self, caller: Caller) -> None:
        self.limits.release(caller.id)
