"""The gRPC side of `lens_server.lifecycle`: while the server loads its models, a call of a
method that is not open is answered UNAVAILABLE before its handler runs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc

from lens_server.access.scopes import OPEN, grpc_scope
from lens_server.errors import LensError, status_of
from lens_server.lifecycle import Lifecycle

log = logging.getLogger(__name__)


class StartingInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but the open ones (health, reflection, KServe's readiness) until
    the server has loaded."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or grpc_scope(method) == OPEN:
            return handler
        refusal = self.lifecycle.refusal(method)
        if refusal is None:
            return handler
        return _refusing(handler, refusal)


def _refusing(handler: grpc.RpcMethodHandler, error: LensError) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers `error` and reads nothing."""

    async def refuse(_: Any, context: grpc.aio.ServicerContext) -> NoReturn:
        status, message, _ = status_of(error)
        log.info("%s", message)
        await context.abort(grpc.StatusCode[status.grpc], message)
        raise AssertionError("unreachable: abort raises")

    codec = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, *codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, *codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, *codec)
    return grpc.stream_stream_rpc_method_handler(refuse, *codec)
