"""The errors lens raises, and the one table that maps them to gRPC status codes.

Errors are raised where the problem is found, with a message that says what was wrong and
with which input; the gRPC boundary (`server.services.status`) turns them into statuses.
"""

from __future__ import annotations

import grpc


class LensError(Exception):
    """Base of every error a client is meant to see."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(LensError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LensError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(LensError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(LensError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(LensError):
    """A queue is full; the client should retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(LensError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(LensError):
    """The server is shutting down or the model is being unloaded."""

    code = grpc.StatusCode.UNAVAILABLE


class ModelError(LensError):
    """A model failed to load or to run: a server-side problem, not the client's."""

    code = grpc.StatusCode.INTERNAL


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message for any exception (the one mapping table)."""
    if isinstance(error, LensError):
        return error.code, str(error)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}"


def available(kind: str, names: list[str] | list[int]) -> str:
    """`'Available: a, b.'` for lookup errors, as open_clip phrases them."""
    shown = ", ".join(str(n) for n in names) if names else "none"
    return f"Available {kind}: {shown}."
