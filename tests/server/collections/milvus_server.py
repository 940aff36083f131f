"""A real `milvus-lite server` process for the Milvus backend's tests (temp data dir, free
port). Missing pymilvus or milvus-lite skips those tests, except under CI=true, where it
fails them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server.collections.engine_process import EngineProcess, free_port

BIN = Path(sys.executable).parent / "milvus-lite"


def require() -> None:
    """Skips (fails under CI=true) when the Milvus extra is not installed."""
    missing = []
    try:
        import pymilvus  # noqa: F401
    except ImportError:
        missing.append("pymilvus")
    if not BIN.exists() and shutil.which("milvus-lite") is None:
        missing.append("milvus-lite")
    if missing:
        need = ", ".join(missing)
        message = f"the milvus backend's tests need {need}: pip install 'lens[milvus]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class MilvusServer(EngineProcess):
    """`milvus-lite server --data-dir DIR --port P`; `uri` once it answers."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.uri = self.address = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self, timeout: float = 60) -> None:
        binary = str(BIN) if BIN.exists() else "milvus-lite"
        where = ["--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [binary, "server", "--data-dir", str(self.data), *where],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-lite exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"milvus-lite did not listen on {self.port} in {timeout} s")
