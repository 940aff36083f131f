"""What the routes are given: the core and the fetcher the app was built with."""

from __future__ import annotations

from fastapi import Request

from lens_server.core import Core
from lens_server.http.fetch import Fetcher


def core_of(request: Request) -> Core:
    return request.app.state.core


def fetcher_of(request: Request) -> Fetcher:
    return request.app.state.fetcher
