"""Python client for the lens server (sync and asyncio) and the `lens` command."""

from lens_client.aio import AsyncLensClient
from lens_client.client import Embeddings, LensClient
from lens_client.codec import DEFAULT_SERVER, LensClientError, parse_model

__all__ = [
    "DEFAULT_SERVER",
    "AsyncLensClient",
    "Embeddings",
    "LensClient",
    "LensClientError",
    "parse_model",
]
