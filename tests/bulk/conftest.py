"""Shared by the bulk tests: one local Ray head for the whole session (started with the
`ray` CLI in its own process group, the CLI under test joining it with --address), images
rendered from skimage, and `lens bulk embed` run as a process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

LENS = Path(sys.executable).with_name("lens")
RAY = Path(sys.executable).with_name("ray")
# The head and the drivers the tests start: on the loopback, without Ray's token files (a
# token left in ~/.ray by another local Ray would not match the test head's).
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}
RAY_ENV.pop("RAY_ADDRESS", None)
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "horse", "cat", "coins")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """A Ray head with 2 CPUs on a free port; stopped with its process group."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="lensray-", dir="/tmp")  # short: Ray's sockets live there
    head = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--port",
            str(port),
            "--include-dashboard",
            "false",
            "--temp-dir",
            temp,
            "--disable-usage-stats",
            "--node-ip-address",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=RAY_ENV,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray head did not start") from None
            time.sleep(0.5)
    yield f"127.0.0.1:{port}"
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(10)


def photo_png(name: str) -> bytes:
    import io

    from skimage import data

    pixels = getattr(data, name)()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return {name: photo_png(name) for name in PHOTOS}


def bulk(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`lens bulk embed ARGS --quiet` as a process."""
    return subprocess.run(
        [str(LENS), "bulk", "embed", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=RAY_ENV,
    )


def manifest_of(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])
