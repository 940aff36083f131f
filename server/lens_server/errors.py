"""The errors lens raises, and the one table that maps them to each transport's status.

Errors are raised where the problem is found, with a message that says what was wrong and
with which input. Each class names its gRPC status code and its HTTP status here, once; the
boundaries (`lens_server.services.status` for gRPC, `lens_server.http.errors` for HTTP) only
read them. This module imports no transport, so the core layer can raise these anywhere.
"""

from __future__ import annotations

from typing import NamedTuple


class Status(NamedTuple):
    """How one error leaves each front door: a `grpc.StatusCode` name and an HTTP status."""

    grpc: str
    http: int


class LensError(Exception):
    """Base of every error a client is meant to see."""

    status = Status("INTERNAL", 500)
    # The error's `type` in HTTP error bodies ({"error": {"message", "type", "code"}}).
    kind = "internal_error"


class InvalidInput(LensError):
    status = Status("INVALID_ARGUMENT", 400)
    kind = "invalid_request_error"


class TooLarge(InvalidInput):
    """A request over a size limit (the HTTP body; gRPC enforces its own message limit)."""

    status = Status("RESOURCE_EXHAUSTED", 413)
    kind = "request_too_large"


class UnsupportedMediaType(InvalidInput):
    status = Status("INVALID_ARGUMENT", 415)
    kind = "unsupported_media_type"


class NotFound(LensError):
    status = Status("NOT_FOUND", 404)
    kind = "not_found_error"


class AlreadyExists(LensError):
    status = Status("ALREADY_EXISTS", 409)
    kind = "conflict_error"


class FailedPrecondition(LensError):
    status = Status("FAILED_PRECONDITION", 409)
    kind = "failed_precondition"


class Overloaded(LensError):
    """A queue is full; the client should retry later."""

    status = Status("RESOURCE_EXHAUSTED", 429)
    kind = "rate_limit_error"
    # Seconds a client is told to wait (HTTP `Retry-After`).
    retry_after_s = 1


class RateLimited(Overloaded):
    """A client (an API key, or a peer address where no keys are set) is over its limits."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthenticated(LensError):
    """No API key, or one the server does not know, where keys are required."""

    status = Status("UNAUTHENTICATED", 401)
    kind = "authentication_error"


class PermissionDenied(LensError):
    """A valid API key without the scope the call needs (the message names it)."""

    status = Status("PERMISSION_DENIED", 403)
    kind = "permission_error"


class DeadlineExceeded(LensError):
    status = Status("DEADLINE_EXCEEDED", 504)
    kind = "timeout_error"


class Unavailable(LensError):
    """The server is shutting down, not ready yet, or the model is being unloaded."""

    status = Status("UNAVAILABLE", 503)
    kind = "unavailable_error"


class ModelError(LensError):
    """A model failed to load or to run: a server-side problem, not the client's."""

    status = Status("INTERNAL", 500)
    kind = "model_error"


def status_of(error: BaseException) -> tuple[Status, str, str]:
    """The status, message and kind for any exception (the one mapping table)."""
    if isinstance(error, LensError):
        return error.status, str(error), error.kind
    return LensError.status, f"internal error: {type(error).__name__}: {error}", LensError.kind


def available(kind: str, names: list[str] | list[int]) -> str:
    """`'Available: a, b.'` for lookup errors, as open_clip phrases them."""
    shown = ", ".join(str(n) for n in names) if names else "none"
    return f"Available {kind}: {shown}."
