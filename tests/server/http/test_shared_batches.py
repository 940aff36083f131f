"""Both front doors feed one batcher: an HTTP request and a gRPC request that wait together
run through the tower in one batch, as the batcher's statistics show.

The server runs in this process (`InProcessServer`: `LensServer` on an event loop of its own
thread) so that the test can read its batchers; `held` makes the text tower's batches wait
until the test releases them, so what queues behind a running batch is decided by the test,
not by how fast a loaded machine runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import numpy as np
from lens.v1 import inference_pb2, inference_pb2_grpc

from lens_server.app import LensServer
from lens_server.batching import Batcher
from lens_server.config import BatchConfig, ServerConfig
from lens_server.model import LoadedVersion

T = TypeVar("T")


class InProcessServer:
    """`LensServer` (gRPC and HTTP on free ports) on an event loop in a thread of its own."""

    def __init__(self, repo: Path, collections: Path, **config: Any) -> None:
        self.config = ServerConfig(
            repo=repo, collections=collections, port=0, http_port=0, poll_s=0, **config
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server: LensServer = self.call(self._start())
        self.address = f"127.0.0.1:{self.server.port}"
        self.http = f"http://127.0.0.1:{self.server.http_port}"

    async def _start(self) -> LensServer:
        server = LensServer(self.config)  # its gRPC server belongs to this loop
        await server.start()
        return server

    def call(self, work: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def version(self, model: str = "tiny") -> LoadedVersion:
        return self.server.registry.resolve(model)

    def batcher(self, modality: str, model: str = "tiny") -> Batcher:
        return self.version(model).batchers[modality]

    def stop(self) -> None:
        self.call(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class Gate:
    """Batches of a held tower start (`started` is set), then wait until `open`."""

    started: threading.Event
    opened: threading.Event

    def open(self) -> None:
        self.opened.set()


@contextmanager
def held(batcher: Batcher) -> Iterator[Gate]:
    """The tower's batches wait at the gate (on the batcher's worker thread, where the tower
    runs) until it opens; opened again when the block ends."""
    gate = Gate(threading.Event(), threading.Event())
    run = batcher._run_fn  # the tower itself, wrapped for the block only

    def waiting(x: Any) -> Any:
        gate.started.set()
        assert gate.opened.wait(60), "the test never opened the gate"
        return run(x)

    batcher._run_fn = waiting
    try:
        yield gate
    finally:
        gate.open()
        batcher._run_fn = run


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def http_embed(base: str, texts: list[str]) -> np.ndarray:
    response = httpx.post(f"{base}/v1/embeddings", json={"input": texts}, timeout=60)
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], np.float32)


def grpc_embed(address: str, texts: list[str]) -> np.ndarray:
    with grpc.insecure_channel(address) as channel:
        request = inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text=t) for t in texts])
        m = inference_pb2_grpc.InferenceStub(channel).Embed(request, timeout=60).embeddings
    return np.frombuffer(m.data, "<f4").reshape(m.rows, m.cols)


def test_http_and_grpc_requests_share_a_batch(tiny_repo: Path, tmp_path: Path):
    lens = InProcessServer(
        tiny_repo,
        tmp_path,
        batch=BatchConfig(max_batch_size=8, max_queue_delay_ms=5),
    )
    try:
        text = lens.batcher("text")
        with ThreadPoolExecutor(3) as pool, held(text) as gate:
            busy = pool.submit(grpc_embed, lens.address, ["keeps the tower busy"])
            assert gate.started.wait(30)
            # Both queue behind the running batch, whichever front door they came through.
            over_http = pool.submit(http_embed, lens.http, ["a photo of a cat"])
            over_grpc = pool.submit(grpc_embed, lens.address, ["two dogs on a beach"])
            wait_until(lambda: text.queued == 2, "both requests' inputs are queued")
            gate.open()
            busy.result(60)
            shared = np.concatenate([over_http.result(60), over_grpc.result(60)])
        sizes = list(text.stats.sizes)
        assert sizes[-2:] == [1, 2], f"latest text batches: {sizes}"
        # Each got its own vector: the same as its text embedded alone.
        alone = np.concatenate(
            [
                grpc_embed(lens.address, ["a photo of a cat"]),
                http_embed(lens.http, ["two dogs on a beach"]),
            ]
        )
        np.testing.assert_allclose(shared, alone, atol=1e-5)
    finally:
        lens.stop()
