"""What the tests' database server processes (`milvus_server.MilvusServer`,
`pg_server.PgServer`) share: a free port, and a child process that can be SIGKILLed, stopped
and started again on the same port and data."""

from __future__ import annotations

import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineProcess:
    """An engine's server as a child process; `address` is what lens's flag for it takes."""

    address: str
    process: subprocess.Popen[bytes] | None = None
    stop_signal = signal.SIGTERM

    def start(self, timeout: float = 60) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL: no shutdown, no checkpoint."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(20)

    def remove(self) -> None:
        """Stops the server and deletes what it wrote outside pytest's folders."""
        self.stop()
