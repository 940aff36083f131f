"""Where a server is in its life, for both front doors: loading its models (the ports are
open, health says NOT_SERVING), serving, or draining after a SIGTERM.

While it loads, only the open calls (health, reflection, metrics, the schema: the `OPEN`
entries of `lens_server.access.scopes`) are answered; every other call is refused with
UNAVAILABLE / 503, since the collections and models it would reach are not there yet. The
gRPC interceptor (`lens_server.services.starting`) and the HTTP middleware
(`lens_server.http.starting`) ask `refusal` here.
"""

from __future__ import annotations

from lens_server.errors import Unavailable

LOADING = "loading models"
DRAINING = "shutting down"


class Lifecycle:
    """`loaded` once start-up has opened the collections and loaded the models;
    `draining` from the first SIGTERM or SIGINT on (a server can drain before it loaded)."""

    def __init__(self) -> None:
        self.loaded = False
        self.draining = False

    def reason(self) -> str:
        """Why the server is not ready by its life alone ('' when loaded and not draining)."""
        if self.draining:
            return DRAINING
        return "" if self.loaded else LOADING

    def refusal(self, call: str) -> Unavailable | None:
        """The error a call that is not open gets now, or None when it may run."""
        if self.loaded:
            return None
        return Unavailable(
            f"{call}: lens is {LOADING} and takes no calls yet; retry once its health check "
            "says SERVING (gRPC health, or HTTP /health/ready)"
        )
