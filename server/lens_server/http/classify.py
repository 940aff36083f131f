"""Routes of the classify family (filled in next)."""

from fastapi import APIRouter

from lens_server.http.errors import RESPONSES

router = APIRouter(responses=RESPONSES)
