"""Graceful drain of `lens serve` on SIGTERM, and readiness while the models load.

Real `lens serve` processes on tiny_repo. Calls are held in flight without sleeps: a primer
of 1024 texts keeps the text tower busy in batches of 8, the calls sent meanwhile queue
behind it, and with a 120 s `--max-queue-delay-ms` they wait there (the batch is not full)
until the test fills the batch through an EmbedStream that stays open across the signal.
What is queued is read from the server's own `lens_batch_queue_inputs` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lens.v1 import index_pb2, index_pb2_grpc, inference_pb2, inference_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from lens_server.app import LensServer
from lens_server.config import ServerConfig
from tests.conftest import ServerProcess

T = TypeVar("T")

BATCH = 8
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INFERENCE = "lens.v1.Inference"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def texts(n: int, tag: str = "") -> list[inference_pb2.Input]:
    return [inference_pb2.Input(text=f"{tag} text number {i}") for i in range(n)]


def rows(response: inference_pb2.EmbedResponse) -> np.ndarray:
    m = response.embeddings
    return np.frombuffer(m.data, "<f4").reshape(m.rows, m.cols)


def health(address: str, service: str = "") -> int:
    """A Health.Check on a channel of its own: a new connection to the port."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def grpc_refused(address: str) -> bool:
    try:
        health(address)
    except grpc.RpcError as e:
        return e.code() == grpc.StatusCode.UNAVAILABLE
    return False


def http_refused(base: str) -> bool:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def text_queue(base: str) -> float:
    """Inputs waiting in the text tower's queue, from the server's /metrics."""
    scraped = httpx.get(f"{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(scraped):
        if family.name == "lens_batch_queue_inputs":
            for sample in family.samples:
                if sample.labels.get("modality") == "text":
                    return sample.value
    return 0.0


def raw_collection(channel: grpc.Channel, name: str) -> list[np.ndarray]:
    """A collection of raw 4-d vectors with items a, b, c written (and acknowledged)."""
    index = index_pb2_grpc.IndexStub(channel)
    index.CreateCollection(index_pb2.CreateCollectionRequest(name=name, dim=4), timeout=30)
    vectors = [np.array([i + 1, 0.5, -1, 2], np.float32) for i in range(3)]
    items = [
        index_pb2.Item(id=key, vector=index_pb2.Vector(values=v.tolist()))
        for key, v in zip("abc", vectors, strict=True)
    ]
    done = index.Upsert(index_pb2.UpsertRequest(collection=name, items=items), timeout=30)
    assert done.upserted == 3
    return vectors


def assert_kept(repo: Path, collections: Path, name: str, vectors: list[np.ndarray]) -> None:
    """A new server on the same folder has the collection's items a, b, c."""
    again = ServerProcess(repo, collections=collections)
    try:
        with grpc.insecure_channel(again.address) as channel:
            got = index_pb2_grpc.IndexStub(channel).Get(
                index_pb2.GetRequest(collection=name, ids=["a", "b", "c"], include_vectors=True),
                timeout=30,
            )
        assert [item.id for item in got.items] == ["a", "b", "c"]
        # Stored as the collection prepares them (cosine: unit length), in their direction.
        for item, vector in zip(got.items, vectors, strict=True):
            stored = np.array(item.vector.values, np.float32)
            np.testing.assert_allclose(stored, vector / np.linalg.norm(vector), atol=1e-6)
    finally:
        again.stop()


def said(proc: ServerProcess) -> str:
    """Everything an exited server wrote."""
    proc.stop()  # joins the thread that reads its output into `log`
    return "".join(proc.log)


class Stream:
    """An EmbedStream whose requests the test sends one by one, and ends with `close`."""

    def __init__(self, stub: inference_pb2_grpc.InferenceStub) -> None:
        self._requests: queue.Queue[inference_pb2.EmbedRequest | None] = queue.Queue()
        self._call = stub.EmbedStream(iter(self._requests.get, None), timeout=120)

    def send(self, inputs: list[inference_pb2.Input]) -> None:
        self._requests.put(inference_pb2.EmbedRequest(inputs=inputs))

    def close(self) -> list[inference_pb2.EmbedResponse]:
        self._requests.put(None)
        return list(self._call)


@pytest.fixture()
def held_server(tiny_repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tiny_repo,
        "--max-batch-size",
        str(BATCH),
        "--max-queue-delay-ms",
        "120000",
        "--drain-delay",
        "5",  # room for the checks below on a loaded machine, before the ports close
        collections=tmp_path / "collections",
    )
    yield proc
    proc.stop()


@pytest.mark.slow
def test_sigterm_drains_calls_in_flight(held_server: ServerProcess, tiny_repo: Path) -> None:
    lens, base = held_server, held_server.http
    assert base
    with (
        grpc.insecure_channel(lens.address) as channel,
        ThreadPoolExecutor(4) as pool,
        httpx.Client(timeout=120) as client,
    ):
        # The banner came once the server was ready: no wait for SERVING.
        assert health(lens.address) == SERVING
        vectors = raw_collection(channel, "kept")
        stub = inference_pb2_grpc.InferenceStub(channel)
        primer = stub.Embed.future(inference_pb2.EmbedRequest(inputs=texts(1024)), timeout=120)
        wait_until(lambda: text_queue(base) > BATCH, "the primer's inputs are queued")
        # Five inputs queue behind the primer: 3 gRPC calls, 1 HTTP call, 1 stream message.
        calls = [
            stub.Embed.future(inference_pb2.EmbedRequest(inputs=texts(1, str(i))), timeout=120)
            for i in range(3)
        ]
        over_http: Future[httpx.Response] = pool.submit(
            client.post, f"{base}/v1/embeddings", json={"input": ["held over HTTP"]}
        )
        stream = Stream(stub)
        stream.send(texts(1, "first"))
        assert len(rows(primer.result(120))) == 1024
        wait_until(lambda: text_queue(base) == 5, "five held inputs wait in the queue")

        lens.process.send_signal(signal.SIGTERM)
        # At once: health NOT_SERVING, readiness 503, while the ports still take connections.
        wait_until(lambda: health(lens.address) == NOT_SERVING, "health is NOT_SERVING")
        assert health(lens.address, INFERENCE) == NOT_SERVING
        with httpx.Client(timeout=10) as fresh:
            ready = fresh.get(f"{base}/health/ready")
            assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
            # KServe's protocol answers false with a 4xx (Triton: 400).
            assert fresh.get(f"{base}/v2/health/ready").status_code == 400
            assert fresh.get(f"{base}/health/live").status_code == 200
        # After the drain delay the ports refuse new connections, with every call held.
        wait_until(lambda: grpc_refused(lens.address), "the gRPC port refuses")
        wait_until(lambda: http_refused(base), "the HTTP port refuses")
        early = [call.exception() for call in calls if call.done()]
        assert not early and not over_http.done(), (early, lens.log)

        stream.send(texts(BATCH - 5, "second"))  # fills the batch: everything held runs
        answers = stream.close()
        assert [len(rows(a)) for a in answers] == [1, BATCH - 5]
        for call in calls:
            assert rows(call.result(60)).shape == (1, 32)
        response = over_http.result(60)
        assert response.status_code == 200, response.text
        assert len(response.json()["data"][0]["embedding"]) == 32

    assert lens.process.wait(60) == 0
    out = said(lens)
    assert "draining" in out and "drained" in out, out
    assert_kept(tiny_repo, lens.collections, "kept", vectors)


@pytest.mark.slow
def test_second_signal_exits_at_once(tiny_repo: Path, tmp_path: Path) -> None:
    lens = ServerProcess(tiny_repo, "--drain-delay", "600", collections=tmp_path / "c")
    try:
        with grpc.insecure_channel(lens.address) as channel:
            vectors = raw_collection(channel, "acknowledged")
        lens.process.send_signal(signal.SIGTERM)
        wait_until(lambda: health(lens.address) == NOT_SERVING, "health is NOT_SERVING")
        lens.process.send_signal(signal.SIGTERM)
        # 128 + SIGTERM, well before the 600 s drain delay would have ended.
        assert lens.process.wait(30) == 128 + signal.SIGTERM
        assert "SIGTERM during the drain: exiting now with code 143" in said(lens)
    finally:
        lens.stop()
    assert_kept(tiny_repo, lens.collections, "acknowledged", vectors)


@contextlib.contextmanager
def in_process(
    repo: Path, collections: Path
) -> Iterator[tuple[LensServer, Callable[[Coroutine[Any, Any, Any]], Any]]]:
    """A LensServer on an event loop of its own thread, and `call`, which runs a coroutine
    there and returns its result; the server is stopped at the end unless it was."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, loop).result(120)

    async def create() -> LensServer:  # its gRPC server belongs to the loop
        config = ServerConfig(repo=repo, collections=collections, port=0, http_port=0)
        return LensServer(config)

    server = call(create())
    try:
        yield server, call
    finally:
        if not server.lifecycle.draining:
            call(server.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_ports_open_while_models_load(tiny_repo: Path, tmp_path: Path) -> None:
    """Between `listen` and `load` (what `lens serve` does first, then second): live, not
    ready, and every call that is not a health check refused with UNAVAILABLE / 503."""
    with in_process(tiny_repo, tmp_path) as (server, call):
        port = call(server.listen())
        address, base = f"127.0.0.1:{port}", f"http://127.0.0.1:{server.http_port}"
        assert health(address) == NOT_SERVING
        assert health(address, INFERENCE) == NOT_SERVING
        with grpc.insecure_channel(address) as channel, httpx.Client(timeout=30) as client:
            ready = client.get(f"{base}/health/ready")
            assert ready.status_code == 503 and ready.json()["reason"] == "loading models"
            assert client.get(f"{base}/v2/health/ready").status_code == 400
            assert client.get(f"{base}/health/live").status_code == 200
            assert client.get(f"{base}/v2/health/live").status_code == 200
            request = inference_pb2.EmbedRequest(inputs=texts(1))
            embed = inference_pb2_grpc.InferenceStub(channel).Embed
            with pytest.raises(grpc.RpcError) as refused:
                embed(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Embed: lens is loading models" in str(refused.value.details())
            index = index_pb2_grpc.IndexStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                index.ListCollections(index_pb2.ListCollectionsRequest(), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            answer = client.post(f"{base}/v1/embeddings", json={"input": ["a cat"]})
            assert answer.status_code == 503
            error = answer.json()["error"]
            assert error["type"] == "unavailable_error"
            assert error["message"].startswith("POST /v1/embeddings: lens is loading models")

            call(server.load())
            assert health(address) == health(address, INFERENCE) == SERVING
            assert client.get(f"{base}/health/ready").status_code == 200
            assert rows(embed(request, timeout=30)).shape == (1, 32)
            assert client.post(f"{base}/v1/embeddings", json={"input": ["a cat"]}).is_success


@pytest.mark.slow
def test_a_health_watch_does_not_hold_the_drain(tiny_repo: Path, tmp_path: Path) -> None:
    """A Watch stream (gRPC client-side health checking keeps one open) ends when the ports
    close, with NOT_SERVING: the server exits without waiting out its 600 s grace."""
    lens = ServerProcess(tiny_repo, "--grace-s", "600", collections=tmp_path / "w")
    try:
        with grpc.insecure_channel(lens.address) as channel:
            request = health_pb2.HealthCheckRequest(service=INFERENCE)
            watch = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=60)
            assert next(watch).status == SERVING
            lens.process.send_signal(signal.SIGTERM)
            sent: list[int] = []
            try:
                sent.extend(answer.status for answer in watch)  # until it ends, with OK
            except grpc.RpcError as e:
                raise AssertionError(f"the watch failed after {sent}: {e}") from e
            assert sent == [NOT_SERVING]
        assert lens.process.wait(60) == 0
    finally:
        lens.stop()


def test_a_stop_tells_the_health_watchers_before_the_ports_close(
    tiny_repo: Path, tmp_path: Path
) -> None:
    """A stop with no drain delay (a signal while the models load ends so) still sends each
    open Watch its NOT_SERVING, then ends it with OK, before the ports close."""
    with in_process(tiny_repo, tmp_path) as (server, call):
        address = f"127.0.0.1:{call(server.listen())}"
        call(server.load())
        with grpc.insecure_channel(address) as channel:
            watches = [
                health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=service), timeout=60
                )
                for service in ("", INFERENCE)
            ]
            assert [next(w).status for w in watches] == [SERVING, SERVING]
            call(server.stop())
            assert [[answer.status for answer in w] for w in watches] == [[NOT_SERVING]] * 2
