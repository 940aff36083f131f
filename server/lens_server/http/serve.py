"""uvicorn in the running event loop: the HTTP front door beside `grpc.aio`, one process."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import uvicorn

from lens_server.http.guard import ASGIApp

if TYPE_CHECKING:  # the HTTP front door needs only its uvicorn options, and no grpc
    from lens_server.tls import ServerTls


class HttpServer:
    """Serves an ASGI app on `host:port` (0: any free port) until `stop`; over TLS where `tls`
    is given (and asking clients for their certificate where it names a client CA)."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        grace_s: float = 5.0,
        tls: ServerTls | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            log_config=None,  # uvicorn's records go through the server's log (lens_server.logs)
            timeout_keep_alive=30,
            timeout_graceful_shutdown=max(1, round(grace_s)),
            **(tls.uvicorn_options() if tls else {}),
        )
        self._server = uvicorn.Server(self._config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listens and returns the port. The socket is bound here (not by uvicorn) so that
        port 0 gives the port chosen, and uvicorn installs no signal handlers of its own."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP spelled out: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
        # proto says TCP, and a response written as headers then body otherwise waits out
        # the client's delayed ACK (40 ms on Linux).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise OSError(f"could not listen on {self.host}:{self.port} for HTTP: {e}") from e
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        # uvicorn's own `serve` would install its signal handlers over the server's; these
        # are the steps it takes inside them. `load` builds the SSL context from the TLS
        # options, and `startup` serves the socket through it.
        self._config.load()
        self._server.lifespan = self._config.lifespan_class(self._config)
        await self._server.startup(sockets=[sock])
        self._task = asyncio.get_running_loop().create_task(self._server.main_loop())
        return self.port

    async def stop(self) -> None:
        """Stops taking connections and lets open requests finish."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        await self._server.shutdown()
        self._task = None
