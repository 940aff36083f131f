"""The HTTP/JSON front door: an ASGI app served by uvicorn in the gRPC server's event loop.

Routes only translate JSON (or multipart uploads) to the core's types and back; one router
module per API family (`openai`, `embed`, `classify`, `collections`, `models`, `health`).
"""

from lens_server.http.app import build_app
from lens_server.http.serve import HttpServer

__all__ = ["HttpServer", "build_app"]
