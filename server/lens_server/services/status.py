"""The gRPC boundary: every error leaves a handler as a status code with a clear message."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from lens_server.errors import status_of

log = logging.getLogger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _report(error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    status, message, _ = status_of(error)
    code = grpc.StatusCode[status.grpc]
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
    else:
        log.info("%s: %s: %s", method, code.name, message)
    return code, message


def unary(
    method: Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Maps errors raised by a unary handler to statuses (the one broad `except`)."""

    @functools.wraps(method)
    async def handler(self: S, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except Exception as e:
            code, message = _report(e, method.__name__)
            await context.abort(code, message)
            raise  # unreachable: abort raises

    return handler


def streaming(
    method: Callable[[S, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]],
) -> Callable[[S, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
    """The same for a handler that streams its responses."""

    @functools.wraps(method)
    async def handler(self: S, requests: Any, context: grpc.aio.ServicerContext):
        try:
            async for response in method(self, requests, context):
                yield response
        except Exception as e:
            code, message = _report(e, method.__name__)
            await context.abort(code, message)

    return handler


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a `time.monotonic()` time; None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
