"""gRPC health: grpc_health's servicer, with Watch streams that end when the server stops
taking calls.

A Watch is a stream that never ends by itself (gRPC's client-side health checking keeps one
open per connection), so a server that waits for its calls in flight at shutdown would wait
out all of `grace_s` for each watcher. Here each Watch sends the status as it changes and
ends, with OK, once `close` is called and it has sent the latest status (NOT_SERVING by
then); `close` returns when every Watch has ended, so the ports close after the watchers were
told (a status written while the server stops may never reach them), and a watcher that asks
again is refused with the port.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpc_health.v1._async import HealthServicer
from grpc_health.v1.health_pb2 import HealthCheckResponse


class Health(HealthServicer):
    """Check and List as grpc_health answers them; Watch as the module says."""

    def __init__(self) -> None:
        super().__init__()
        self._closed = False
        self._changed = asyncio.Event()  # replaced by a new one at each change
        self._watching = 0
        self._no_watch = asyncio.Event()
        self._no_watch.set()

    async def set(self, service: str, status: HealthCheckResponse.ServingStatus) -> None:
        await super().set(service, status)
        self._notify()

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        self._notify()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Ends every Watch once it has sent the latest status, now and from now on; returns
        when they have ended, or after `timeout_s` (a watcher that reads nothing blocks its
        stream's writes)."""
        self._closed = True
        self._notify()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_watch.wait(), timeout_s)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Watch(self, request: Any, context: Any) -> None:
        self._watching += 1
        self._no_watch.clear()
        try:
            await self._watch(request, context)
        finally:
            self._watching -= 1
            if not self._watching:
                self._no_watch.set()

    async def _watch(self, request: Any, context: Any) -> None:
        sent = None
        while True:
            changed = self._changed  # taken before the status read: no change is missed
            # The statuses grpc_health keeps (its set and graceful shutdown write them).
            status = self._server_status.get(request.service, HealthCheckResponse.SERVICE_UNKNOWN)
            if status != sent:
                await context.write(HealthCheckResponse(status=status))
                sent = status
            if changed.is_set():  # it changed, or closed, while the write was out: read again
                continue
            if self._closed:
                return
            await changed.wait()
