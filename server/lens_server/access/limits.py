"""Limits per client: requests and inputs per second (token buckets) and requests in flight.

A client is an API key, or a peer address where the server has no keys. Each bucket holds
one second of its rate and starts full; a request takes a token per request and one per
input (an image, a text, an item, a query). A request with more inputs than a bucket holds
is let through when the bucket is full and leaves it in debt, so one large batch is served
and paces those after it, instead of never fitting. Over a limit, the request is refused
whole with RateLimited, which says in whole seconds when the bucket will have room.
Everything here runs on the server's one event loop, so it takes no lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lens_server.errors import RateLimited

if TYPE_CHECKING:
    from lens_server.config import ClientLimits

# Idle clients (full buckets, nothing in flight) are forgotten past this many.
MAX_TRACKED = 10_000


@dataclass
class TokenBucket:
    """`rate` tokens a second, up to `rate` held (one second's burst)."""

    rate: float
    tokens: float = field(init=False)
    updated: float = field(init=False)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.tokens, self.updated = self.rate, self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, cost: float) -> float:
        """Seconds until `cost` tokens may be taken (0: now); takes nothing."""
        self._refill()
        need = min(cost, self.rate)
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate

    def take(self, cost: float) -> None:
        self._refill()
        self.tokens -= cost

    @property
    def full(self) -> bool:
        self._refill()
        return self.tokens >= self.rate


@dataclass
class _Client:
    requests: TokenBucket | None
    inputs: TokenBucket | None
    in_flight: int = 0

    def idle(self) -> bool:
        buckets = [b for b in (self.requests, self.inputs) if b is not None]
        return self.in_flight == 0 and all(b.full for b in buckets)


class Limiter:
    """The limits of every client; `admit` a request, `release` it when it ends."""

    def __init__(self, limits: ClientLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._clients: dict[str, _Client] = {}

    @property
    def active(self) -> bool:
        limits = self.limits
        return bool(limits.requests_per_s or limits.inputs_per_s or limits.max_in_flight)

    def _client(self, client: str) -> _Client:
        state = self._clients.get(client)
        if state is None:
            if len(self._clients) >= MAX_TRACKED:
                self._clients = {k: v for k, v in self._clients.items() if not v.idle()}
            limits, clock = self.limits, self._clock
            state = _Client(
                TokenBucket(limits.requests_per_s, clock) if limits.requests_per_s else None,
                TokenBucket(limits.inputs_per_s, clock) if limits.inputs_per_s else None,
            )
            self._clients[client] = state
        return state

    def admit(self, client: str, name: str, inputs: int) -> None:
        """Counts a request of `inputs` inputs against `client` (called `name` in messages),
        or raises RateLimited and counts nothing; a request admitted must be `release`d."""
        if not self.active:
            return
        state, limits = self._client(client), self.limits
        if limits.max_in_flight and state.in_flight >= limits.max_in_flight:
            raise RateLimited(
                f"{name} has {state.in_flight} requests in flight, the limit "
                f"(--max-in-flight-per-client {limits.max_in_flight}); retry when one ends",
                1,
            )
        checks = [
            (state.requests, 1, "requests/s", "--rate-limit-rps"),
            (state.inputs, inputs, "inputs/s", "--rate-limit-inputs"),
        ]
        for bucket, cost, unit, flag in checks:
            if bucket is not None and cost and (wait := bucket.wait(cost)) > 0:
                raise RateLimited(
                    f"{name} is over its limit of {bucket.rate:g} {unit} ({flag}); "
                    f"retry in {wait:.2f} s",
                    max(1, math.ceil(wait)),
                )
        for bucket, cost, _, _ in checks:
            if bucket is not None and cost:
                bucket.take(cost)
        state.in_flight += 1

    def pace(self, client: str, inputs: int) -> float:
        """For a stream's messages: takes `inputs` tokens when there is room and returns 0,
        else returns the seconds to wait before asking again (a stream is paced, not
        refused, so a long job slows down instead of failing half done)."""
        if not self.active or not inputs:
            return 0.0
        bucket = self._client(client).inputs
        if bucket is None:
            return 0.0
        if (wait := bucket.wait(inputs)) > 0:
            return wait
        bucket.take(inputs)
        return 0.0

    def release(self, client: str) -> None:
        if self.active and (state := self._clients.get(client)) is not None:
            state.in_flight = max(0, state.in_flight - 1)
