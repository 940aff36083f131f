"""The web page: a single-page app at `/` over the public HTTP API, so everything it does
can also be done with `curl`. Plain HTML, CSS and ES modules (one per view) in `static/`,
shipped as package data and served as they are: no build step, nothing from the internet.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from lens_server.errors import NotFound

router = APIRouter(include_in_schema=False)
# Revalidated on each load (a 304 while unchanged), so a new server's page is never stale.
_HEADERS = {"Cache-Control": "no-cache"}
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


def _static() -> Path:
    return Path(str(resources.files(__package__) / "static"))


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(_static() / "index.html", media_type="text/html", headers=_HEADERS)


@router.get("/web/{name}")
async def asset(name: str) -> FileResponse:
    """One file of the page, by name: only those the folder holds (no paths)."""
    files = {p.name: p for p in _static().iterdir() if p.suffix in _TYPES}
    if name not in files:
        raise NotFound(f"the page has no file {name!r}. Available: {', '.join(sorted(files))}")
    path = files[name]
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)
