"""What every gRPC call passes on its way to a servicer: its bytes are checked to be a message
of its method, the call gets its request id (the client's `x-request-id` metadata, or one
made; sent back as initial metadata before anything else), and when it ends it is counted
and timed (with metrics) and logged in one line (`lens_server.logs`).

Bytes that do not parse as the method's request message (random bytes, a truncated varint)
would otherwise leave the generated deserializer as a DecodeError, which grpc.aio answers
with UNKNOWN and a traceback in the log for every such request. Here each method's
deserializer is wrapped: what does not parse becomes an `Undecodable` the call answers with
INVALID_ARGUMENT naming the method, logged at most once per client address per
`LOG_INTERVAL_S`, and counted in `lens_undecodable_requests_total`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from lens_server import logs
from lens_server import metrics as metering
from lens_server.access.scopes import OPEN, grpc_scope
from lens_server.errors import InvalidInput
from lens_server.metrics import Call, Metrics
from lens_server.services.access import peer_address

log = logging.getLogger(__name__)

# Seconds between two log lines about one client's undecodable requests.
LOG_INTERVAL_S = 60.0
# Client addresses remembered for that; past this many the memory starts over.
_CLIENTS_KEPT = 4096


@dataclass(frozen=True)
class Undecodable:
    """What a request's bytes became when they are not a message of its method."""

    method: str
    error: str

    def message(self) -> str:
        return f"{self.method}: the request is not a valid message for this method ({self.error})"


class Calls(grpc.aio.ServerInterceptor):
    """The server's first interceptor: undecodable requests refused, calls metered and
    logged."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        self._received: dict[str, Any] = {}  # method → its received-bytes counter
        self._logged: dict[str, tuple[float, int]] = {}  # client → (last logged, unlogged)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        # Wrapped anew for each call: what the interceptors after this one return may
        # depend on the call.
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method
            return handler
        return self._wrap(handler_call_details.method, handler)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserialize = self._checked(method, handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), deserialize, serialize
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary), deserialize, serialize
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream), deserialize, serialize
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, handler.stream_stream), deserialize, serialize
        )

    def _checked(
        self, method: str, deserialize: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any] | None:
        if deserialize is None:
            return None
        received = None
        if self._metrics:  # only methods that exist get here: few labels
            received = self._received.get(method) or self._metrics.received.labels("grpc", method)
            self._received[method] = received

        def checked(data: bytes) -> Any:
            if received is not None:
                received.inc(len(data))
            try:
                return deserialize(data)
            except DecodeError as e:
                return Undecodable(method, str(e))

        return checked

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        """A handler answering once: a unary request, or a stream of requests."""

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._metered(method, context) as call:
                await _send_id(context, call)
                return await behavior(await self._checked_request(request, context), context)

        return handler

    def _streaming(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        """A handler streaming its answers: an async generator, or a coroutine that writes
        through the context (grpc.aio takes both, told apart by their kind)."""
        if not inspect.isasyncgenfunction(behavior):
            return self._unary(method, behavior)

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._metered(method, context) as call:
                await _send_id(context, call)
                request = await self._checked_request(request, context)
                async for response in behavior(request, context):
                    yield response

        return generator

    async def _checked_request(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The request, or a stream of them that stops at a message that did not parse;
        INVALID_ARGUMENT (the call ends here) for a unary request that did not."""
        if isinstance(request, Undecodable):
            self._note(request, context.peer())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message())
        if hasattr(request, "__aiter__"):
            return _Stream(request, self, context.peer())
        return request

    def _note(self, undecodable: Undecodable, peer: str) -> None:
        """Counts an undecodable request; logs it unless its client was logged lately."""
        if self._metrics:
            self._metrics.undecodable.labels(undecodable.method).inc()
        client = peer_address(peer)  # the address without the port: a client reconnects
        now = time.monotonic()
        last, unlogged = self._logged.get(client, (-LOG_INTERVAL_S, 0))
        if now - last < LOG_INTERVAL_S:
            self._logged[client] = (last, unlogged + 1)
            return
        if len(self._logged) >= _CLIENTS_KEPT:
            self._logged.clear()
        self._logged[client] = (now, 0)
        more = f" ({unlogged} more since the last line)" if unlogged else ""
        log.warning(
            "undecodable request from %s%s: %s",
            client,
            more,
            undecodable.message(),
            extra=logs.fields(client=client, method=undecodable.method, unlogged=unlogged),
        )

    @contextmanager
    def _metered(self, method: str, context: grpc.aio.ServicerContext) -> Iterator[Call]:
        """Times the call, counts it by method, serving model and status code, and logs it."""
        started, code = time.perf_counter(), "OK"
        with metering.call() as call:
            call.request_id = logs.request_id(_sent_id(context))
            try:
                yield call
            except (asyncio.CancelledError, GeneratorExit):  # the client went away
                code = "CANCELLED"
                raise
            except BaseException:  # an abort (the code is the context's), or a bug
                code = "UNKNOWN"
                raise
            finally:
                status = context.code()
                code = status.name if status is not None else code
                seconds = time.perf_counter() - started
                if self._metrics is not None:
                    self._metrics.request("grpc", method, call.model, code, seconds)
                peer = peer_address(context.peer())
                logs.request(call, "grpc", method, code, seconds, peer, grpc_scope(method) == OPEN)


def _sent_id(context: grpc.aio.ServicerContext) -> str | None:
    """The call's `x-request-id` metadata; None where it sent none."""
    for key, value in context.invocation_metadata() or ():
        if key == logs.REQUEST_ID:
            return value if isinstance(value, str) else None
    return None


async def _send_id(context: grpc.aio.ServicerContext, call: Call) -> None:
    """The request id, as initial metadata: sent now, so that a call which fails later has
    it too (an abort's status goes in trailing metadata of its own)."""
    await context.send_initial_metadata(((logs.REQUEST_ID, call.request_id),))


class _Stream:
    """A stream of requests that raises InvalidInput at a message that does not parse (the
    servicers' `streaming` decorator answers it with INVALID_ARGUMENT)."""

    def __init__(self, requests: AsyncIterator[Any], calls: Calls, peer: str) -> None:
        self._requests, self._calls, self._peer = requests, calls, peer

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        request = await self._requests.__anext__()
        if isinstance(request, Undecodable):
            self._calls._note(request, self._peer)
            raise InvalidInput(request.message())
        return request
