"""What the routes are given: the core and the fetcher the app was built with.

Coroutines, though they await nothing: FastAPI runs a plain function dependency on a worker
thread, two thread hops a request for an attribute read each.
"""

from __future__ import annotations

from fastapi import Request

from lens_server.core import Core
from lens_server.http.fetch import Fetcher


async def core_of(request: Request) -> Core:
    return request.app.state.core


async def fetcher_of(request: Request) -> Fetcher:
    return request.app.state.fetcher
