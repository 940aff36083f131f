"""The gRPC side of the gate: one interceptor reads each call's `authorization: Bearer KEY`
metadata and its peer, and has `lens_server.access.gate` decide, before the handler runs.

Refusals leave as UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED (with a
`retry-after` trailing metadata entry, in seconds), from the one error table. A unary call
is counted with the inputs of its request message (its inputs, images, items or queries);
a stream is one request in flight for as long as it runs, and each of its messages waits
for room in the inputs bucket instead of being refused, so a long job slows down rather
than failing half done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from lens_server.access.gate import Caller, Gate
from lens_server.access.scopes import OPEN, grpc_scope
from lens_server.errors import LensError, Overloaded, status_of

log = logging.getLogger(__name__)

# Repeated fields of a request whose entries each count as one input (a KServe tensor as
# its rows).
_COUNTED = ("inputs", "images", "items", "queries")


def inputs_of(message: Any) -> int:
    """The inputs a request message carries (a single `query` is one)."""
    fields = message.DESCRIPTOR.fields_by_name
    count = sum(
        _rows(entry) for name in _COUNTED if name in fields for entry in getattr(message, name)
    )
    if "query" in fields and message.HasField("query"):
        count += 1
    return count


def _rows(entry: Any) -> int:
    shape = getattr(entry, "shape", None)
    return int(shape[0]) if shape else 1


def peer_address(peer: str) -> str:
    """`ipv4:127.0.0.1:5555` → `127.0.0.1`: limits count by address, not by connection."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].replace("%5B", "[").replace("%5D", "]")
    return peer


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Every call of a method that is not open passes the gate before its handler."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        scope = grpc_scope(method)
        if handler is None or scope == OPEN:
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, scope),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, method, scope),
                handler.request_deserializer,
                handler.response_serializer,
            )
        raise TypeError(f"{method}: only unary and bidirectional methods pass the gate")

    async def _enter(
        self, context: grpc.aio.ServicerContext, method: str, scope: str | None, inputs: int
    ) -> Caller:
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization", "")
        try:
            caller = self.gate.identify(
                method,
                scope,
                authorization if isinstance(authorization, str) else "",
                peer_address(context.peer()),
            )
            self.gate.admit(caller, inputs)
        except LensError as e:
            await _abort(context, e, method)
        return caller

    def _unary(self, inner: Any, method: str, scope: str | None) -> Any:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            caller = await self._enter(context, method, scope, inputs_of(request))
            try:
                return await inner(request, context)
            finally:
                self.gate.release(caller)

        return behavior

    def _stream(self, inner: Any, method: str, scope: str | None) -> Any:
        gate = self.gate

        async def paced(requests: AsyncIterator[Any], caller: Caller) -> AsyncIterator[Any]:
            async for request in requests:
                count = inputs_of(request)
                while (wait := gate.pace(caller, count)) > 0:
                    await asyncio.sleep(wait)
                yield request

        async def behavior(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            caller = await self._enter(context, method, scope, 0)
            try:
                async for response in inner(paced(requests, caller), context):
                    yield response
            finally:
                gate.release(caller)

        return behavior


async def _abort(context: grpc.aio.ServicerContext, error: LensError, method: str) -> NoReturn:
    status, message, _ = status_of(error)
    log.info("%s: %s: %s", method, status.grpc, message)
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(error, Overloaded):
        trailing = (("retry-after", str(error.retry_after_s)),)
    await context.abort(grpc.StatusCode[status.grpc], message, trailing_metadata=trailing)
    raise AssertionError("unreachable: abort raises")
