"""Prometheus metrics through the real server: every family is there, and each moves as it
should after known traffic; undecodable gRPC requests answer INVALID_ARGUMENT, logged once;
the Grafana dashboard queries only metrics the server has."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from lens.v1 import (
    common_pb2,
    index_pb2,
    index_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, ServerProcess

EMBED = "/lens.v1.Inference/Embed"
DASHBOARD = ROOT / "docs" / "grafana-lens.json"
TOWER = {"model": "tiny", "version": "1", "modality": "text"}
# Families a server has only while something is so: a re-index runs, a GPU is used, a
# collection has a snapshot.
CONDITIONAL = ("lens_collection_reindex_", "lens_gpu_", "lens_collection_snapshot_age_seconds")

Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items())
    )


def names(samples: Samples) -> set[str]:
    return {n for n, _, _ in samples}


@pytest.fixture(scope="module")
def metered(tiny_repo: Path) -> Iterator[ServerProcess]:
    """A server of this module's own: no other test's traffic moves its counters."""
    proc = ServerProcess(tiny_repo, "--max-batch-size", "8", "--max-queue-delay-ms", "5")
    yield proc
    proc.stop()


@pytest.fixture()
def ch(metered: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(metered.address) as channel:
        yield channel


def url(server: ServerProcess) -> str:
    assert server.http
    return f"{server.http}/metrics"


def embed_request(*texts: str, model: str = "") -> inference_pb2.EmbedRequest:
    return inference_pb2.EmbedRequest(
        inputs=[inference_pb2.Input(text=t) for t in texts], model=common_pb2.ModelRef(name=model)
    )


def test_grpc_embeds_move_requests_batches_and_bytes(metered, ch):
    stub = inference_pb2_grpc.InferenceStub(ch)
    before = scrape(url(metered))
    requests = [embed_request(f"a photo of thing {i}") for i in range(5)]
    for request in requests:  # one at a time: each finds the tower idle and runs alone
        stub.Embed(request, timeout=30)
    after = scrape(url(metered))

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    ok = {"transport": "grpc", "method": EMBED, "model": "tiny", "code": "OK"}
    assert delta("lens_requests_total", **ok) == 5
    assert delta("lens_request_duration_seconds_count", **ok) == 5
    assert delta("lens_request_duration_seconds_bucket", **ok, le="+Inf") == 5
    assert delta("lens_batch_size_count", **TOWER) == 5
    assert delta("lens_batch_size_sum", **TOWER) == 5
    assert delta("lens_batch_inputs_total", **TOWER) == 5
    assert delta("lens_batch_inference_seconds_count", **TOWER) == 5
    assert delta("lens_batch_queue_wait_seconds_count", **TOWER) == 5
    assert delta("lens_preprocess_seconds_count", **TOWER) == 5
    assert delta("lens_batch_size_count", **{**TOWER, "modality": "image"}) == 0
    sent = sum(r.ByteSize() for r in requests)
    assert delta("lens_received_bytes_total", transport="grpc", method=EMBED) == sent
    assert total(after, "lens_batch_queue_inputs", **TOWER) == 0


def test_concurrent_inputs_share_batches(metered, ch):
    stub = inference_pb2_grpc.InferenceStub(ch)
    before = scrape(url(metered))
    barrier = threading.Barrier(8)

    def send(i: int) -> None:
        barrier.wait()
        stub.Embed(embed_request(f"text {i}", f"more text {i}"), timeout=30)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = scrape(url(metered))
    inputs = total(after, "lens_batch_size_sum", **TOWER) - total(
        before, "lens_batch_size_sum", **TOWER
    )
    batches = total(after, "lens_batch_size_count", **TOWER) - total(
        before, "lens_batch_size_count", **TOWER
    )
    assert inputs == 16  # every input ran once, in batches of at most 8
    assert 2 <= batches <= 8


def test_http_requests_count_under_their_route(metered):
    assert metered.http
    before = scrape(url(metered))
    body = json.dumps({"input": ["a cat", "a dog"]}).encode()
    response = httpx.post(
        f"{metered.http}/v1/embeddings",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200
    missing = httpx.post(
        f"{metered.http}/v1/collections/nope/search",
        json={"query": {"text": "x"}, "k": 1},
        timeout=30,
    )
    assert missing.status_code == 404
    refused = httpx.post(  # refused by the guard before any route ran: counted under it still
        f"{metered.http}/v1/embeddings", content=b"x", headers={"content-type": "text/plain"}
    )
    assert refused.status_code == 415
    after = scrape(url(metered))

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    route = {"transport": "http", "method": "/v1/embeddings"}
    assert delta("lens_requests_total", **route, model="tiny", code="200") == 1
    assert delta("lens_requests_total", **route, model="", code="415") == 1
    search = "/v1/collections/{collection}/search"
    assert delta("lens_requests_total", transport="http", method=search, code="404") == 1
    assert delta("lens_received_bytes_total", **route) == len(body) + 1
    assert delta("lens_batch_size_sum", **TOWER) == 2
    assert not [ls for n, ls, _ in after if ls.get("method") == "/v1/collections/nope/search"]


def test_failed_grpc_requests_count_with_their_code(metered, ch):
    stub = inference_pb2_grpc.InferenceStub(ch)
    before = scrape(url(metered))
    with pytest.raises(grpc.RpcError) as missing:
        stub.Embed(embed_request("x", model="no-such-model"), timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as empty:
        stub.Embed(inference_pb2.EmbedRequest(), timeout=30)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(url(metered))
    grpc_embed = {"transport": "grpc", "method": EMBED}
    for code in ("NOT_FOUND", "INVALID_ARGUMENT"):
        assert (
            total(after, "lens_requests_total", **grpc_embed, code=code)
            - total(before, "lens_requests_total", **grpc_embed, code=code)
            == 1
        )
    # A model name a client made up is never a label.
    assert not [ls for _, ls, _ in after if ls.get("model") == "no-such-model"]


def test_versions_deploys_and_collections(metered, ch):
    samples = scrape(url(metered))
    serving = {"model": "tiny", "version": "1"}
    assert total(samples, "lens_model_version_state", **serving, state="serving") == 1
    assert total(samples, "lens_model_version_state", **serving) == 1  # one state at a time
    assert total(samples, "lens_model_version_memory_bytes", **serving) > 0
    assert total(samples, "lens_model_version_requests_in_flight", **serving) == 0
    runtimes = [ls for n, ls, _ in samples if n == "lens_model_version_runtime_info"]
    assert {(r["modality"], r["runtime"]) for r in runtimes} == {
        ("image", "onnx"),
        ("text", "onnx"),
    }
    assert all("CPUExecutionProvider" in r["providers"] for r in runtimes)

    models = models_pb2_grpc.ModelsStub(ch)
    models.Deploy(models_pb2.DeployRequest(name="tiny", version=1), timeout=60)
    with pytest.raises(grpc.RpcError) as no_previous:
        models.Rollback(models_pb2.RollbackRequest(name="tiny"), timeout=60)
    assert no_previous.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    index = index_pb2_grpc.IndexStub(ch)
    index.CreateCollection(
        index_pb2.CreateCollectionRequest(name="metered", model=common_pb2.ModelRef(name="tiny")),
        timeout=30,
    )
    items = [index_pb2.Item(id=f"t{i}", text=f"text {i}") for i in range(5)]
    index.Upsert(index_pb2.UpsertRequest(collection="metered", items=items), timeout=60)
    index.Delete(index_pb2.DeleteRequest(collection="metered", ids=["t0"]), timeout=30)
    for _ in range(3):
        index.Search(
            index_pb2.SearchRequest(
                collection="metered", query=index_pb2.Query(text="text 1"), k=2
            ),
            timeout=30,
        )
    samples = scrape(url(metered))
    deploys = {"model": "tiny"}
    assert (
        total(samples, "lens_deploys_total", **deploys, action="deploy", outcome="unchanged") == 1
    )
    assert (
        total(
            samples,
            "lens_deploys_total",
            **deploys,
            action="rollback",
            outcome="FAILED_PRECONDITION",
        )
        == 1
    )
    assert total(samples, "lens_collection_items", collection="metered", index_type="flat") == 4
    assert total(samples, "lens_collection_log_entries", collection="metered") == 6  # 5 + 1
    assert total(samples, "lens_collection_index_memory_bytes", collection="metered") > 0
    assert total(samples, "lens_collection_rebuilding", collection="metered") == 0
    assert total(samples, "lens_collection_search_seconds_count", collection="metered") == 3
    assert "lens_collection_snapshot_age_seconds" not in names(samples)  # none written yet
    assert not names(samples) & {"lens_collection_reindex_done_items"}


def test_undecodable_requests_and_a_port_of_their_own(tiny_repo, tmp_path):
    """Bytes that are no message of the method answer INVALID_ARGUMENT naming it, with one log
    line per client; metrics served on --metrics-port, not on the HTTP port; a collection's
    snapshot age once it has one."""
    first = ServerProcess(tiny_repo, collections=tmp_path)  # writes a collection's snapshot
    with grpc.insecure_channel(first.address) as channel:
        index = index_pb2_grpc.IndexStub(channel)
        index.CreateCollection(index_pb2.CreateCollectionRequest(name="kept", dim=2), timeout=30)
        item = index_pb2.Item(id="a", vector=index_pb2.Vector(values=[1.0, 0.0]))
        index.Upsert(index_pb2.UpsertRequest(collection="kept", items=[item]), timeout=30)
    first.stop()

    proc = ServerProcess(tiny_repo, "--metrics-port", "0", collections=tmp_path)
    try:
        found = [re.search(r"Prometheus metrics on (\S+)", line) for line in proc.log]
        (own,) = [m.group(1) for m in found if m]
        assert proc.http and httpx.get(f"{proc.http}/metrics").status_code == 404
        garbage = (b"\xff\xff\xff\xff\xff", b"\x0a\x80", b"\x0a\x05ab")  # a truncated varint too
        with grpc.insecure_channel(proc.address) as channel:
            raw = channel.unary_unary(EMBED, request_serializer=None, response_deserializer=None)
            for _ in range(4):
                for data in garbage:
                    with pytest.raises(grpc.RpcError) as refused:
                        raw(data, timeout=10)
                    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert EMBED in (refused.value.details() or "")
            stream = channel.stream_stream(
                "/lens.v1.Inference/EmbedStream",
                request_serializer=None,
                response_deserializer=None,
            )
            good = embed_request("fine").SerializeToString()
            with pytest.raises(grpc.RpcError) as mid_stream:
                list(stream(iter([good, b"\xff\xff\xff"]), timeout=30))
            assert mid_stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # The server goes on serving well-formed calls.
            inference_pb2_grpc.InferenceStub(channel).Embed(embed_request("ok"), timeout=30)
        samples = scrape(own)
        assert total(samples, "lens_undecodable_requests_total", method=EMBED) == 12
        assert (
            total(
                samples,
                "lens_requests_total",
                transport="grpc",
                method=EMBED,
                code="INVALID_ARGUMENT",
            )
            == 12
        )
        stream_method = "/lens.v1.Inference/EmbedStream"
        assert total(samples, "lens_undecodable_requests_total", method=stream_method) == 1
        assert total(samples, "lens_collection_snapshot_age_seconds", collection="kept") >= 0
    finally:
        proc.stop()
    rest = "".join(proc.log)
    logged = [line for line in rest.splitlines() if "undecodable request" in line]
    assert len(logged) == 1, logged  # one line for the client, not one per request
    assert "Traceback" not in rest


def test_the_dashboard_queries_only_metrics_the_server_has(metered, ch):
    """Every metric a panel of docs/grafana-lens.json queries is one the server exposes, once
    each kind of traffic has happened (counters and histograms with labels appear then)."""
    inference_pb2_grpc.InferenceStub(ch).Embed(embed_request("x"), timeout=30)
    with pytest.raises(grpc.RpcError):
        ch.unary_unary(EMBED, request_serializer=None, response_deserializer=None)(b"\xff")
    models_pb2_grpc.ModelsStub(ch).Deploy(models_pb2.DeployRequest(name="tiny"), timeout=60)
    index = index_pb2_grpc.IndexStub(ch)
    index.CreateCollection(index_pb2.CreateCollectionRequest(name="board", dim=2), timeout=30)
    query = index_pb2.Query(vector=index_pb2.Vector(values=[1.0, 0.0]))
    index.Search(index_pb2.SearchRequest(collection="board", query=query, k=1), timeout=30)
    samples = scrape(url(metered))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) >= 20
    queried = {m for e in exprs for m in re.findall(r"\blens_[a-z0-9_]+", e)}
    present = names(samples)
    missing = sorted(m for m in queried if m not in present and not m.startswith(CONDITIONAL))
    assert not missing, f"the dashboard queries metrics the server does not have: {missing}"


def test_collections_mid_reindex_report_progress(tmp_path):
    """The re-index gauges, which a live server shows only while a re-index runs."""
    from prometheus_client import generate_latest

    from lens_server.collections import Collections, CollectionSpec
    from lens_server.collections.store import NewItem
    from lens_server.metrics import _Collections

    collections = Collections(tmp_path)
    collection = collections.create(CollectionSpec("photos", 2, model="m", version=1))
    collection.upsert(
        [NewItem(f"i{i}", np.array([1.0, i], np.float32), "", "text", b"x") for i in range(3)]
    )
    collection.begin_reindex("m", 2, 2)
    rows = np.array([row for row, _, _ in collection.pending_sources(1)], np.int64)
    collection.put_reindexed(rows, np.ones((1, 2), np.float32), 2)

    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(_Collections(collections))
    text = generate_latest(registry).decode()
    assert 'lens_collection_reindex_done_items{collection="photos"} 1.0' in text
    assert 'lens_collection_reindex_all_items{collection="photos"} 3.0' in text
    collections.close()


def test_servers_in_one_process_keep_their_metrics_apart():
    from lens_server.metrics import Metrics

    first, second = Metrics(), Metrics()
    first.request("grpc", EMBED, "tiny", "OK", 0.01)
    assert (
        first.registry.get_sample_value(
            "lens_requests_total",
            {"transport": "grpc", "method": EMBED, "model": "tiny", "code": "OK"},
        )
        == 1
    )
    assert (
        second.registry.get_sample_value(
            "lens_requests_total",
            {"transport": "grpc", "method": EMBED, "model": "tiny", "code": "OK"},
        )
        is None
    )


def test_batcher_tells_its_observer_why_inputs_failed():
    """The batcher's observer hook, with a recording observer (no prometheus involved)."""
    from lens_server.batching import Batcher, Partial
    from lens_server.config import BatchConfig
    from lens_server.errors import InvalidInput, LensError

    class Recorder:
        def __init__(self) -> None:
            self.sizes: list[int] = []
            self.waits = 0
            self.failures: dict[str, int] = {}
            self.depths: list[int] = []

        def queued(self, depth: int) -> None:
            self.depths.append(depth)

        def waited(self, seconds) -> None:
            self.waits += len(seconds)

        def ran(self, size: int, seconds: float) -> None:
            self.sizes.append(size)

        def failed(self, reason: str, count: int) -> None:
            self.failures[reason] = self.failures.get(reason, 0) + count

    def tower(x: np.ndarray) -> np.ndarray | Partial:
        if (x[:, 0] < 0).any():
            raise RuntimeError("boom")
        out = np.stack([x[:, 0], x[:, 0]], axis=1)
        bad = {i: InvalidInput("odd row") for i, v in enumerate(x[:, 0]) if v == 7}
        return Partial(out, bad) if bad else out

    async def run() -> Recorder:
        recorder = Recorder()
        config = BatchConfig(max_batch_size=4, max_queue_delay_ms=0, max_queue_size=4)
        batcher = Batcher("fake", tower, config, observer=recorder)
        one = [np.array([1.0], np.float32)]
        await batcher.submit(one + one)
        with pytest.raises(LensError):  # the whole batch fails: INTERNAL for each input
            await batcher.submit([np.array([-1.0], np.float32)] * 2)
        with pytest.raises(InvalidInput):
            await batcher.submit([np.array([7.0], np.float32), *one])
        with pytest.raises(LensError):  # over the queue: refused whole
            await batcher.submit(one * 5)
        with pytest.raises(LensError):  # past its deadline before it ran
            await batcher.submit(one, deadline=time.monotonic() - 1)
        await batcher.close()
        return recorder

    recorder = asyncio.run(run())
    assert recorder.sizes == [2, 2]  # the failing batch never ran to its end
    assert recorder.waits == 6
    assert recorder.failures == {
        "INTERNAL": 2,
        "INVALID_ARGUMENT": 1,
        "RESOURCE_EXHAUSTED": 5,
        "DEADLINE_EXCEEDED": 1,
    }
    assert recorder.depths[-1] == 0


def test_gpu_families_from_torch_and_nvml(monkeypatch):
    """The GPU collector on stand-ins for torch and pynvml (a machine without a GPU has
    neither in use, and registers no GPU collector at all)."""
    import importlib.machinery
    import types

    from prometheus_client import CollectorRegistry

    from lens_server.metrics import _Gpu

    cuda = types.SimpleNamespace(
        is_initialized=lambda: True,
        device_count=lambda: 1,
        memory_allocated=lambda i: 1000,
        memory_reserved=lambda i: 4096,
    )
    torch = types.SimpleNamespace(cuda=cuda)
    nvml = types.ModuleType("pynvml")
    nvml.__spec__ = importlib.machinery.ModuleSpec("pynvml", None)
    nvml.NVMLError = RuntimeError  # type: ignore[attr-defined]
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    memory = types.SimpleNamespace(used=3 << 30, total=80 << 30)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: memory  # type: ignore[attr-defined]
    busy = types.SimpleNamespace(gpu=42)
    nvml.nvmlDeviceGetUtilizationRates = lambda h: busy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    registry = CollectorRegistry()
    registry.register(_Gpu())

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {"device": "0"})

    assert value("lens_gpu_torch_allocated_bytes") == 1000
    assert value("lens_gpu_torch_reserved_bytes") == 4096
    assert value("lens_gpu_memory_used_bytes") == 3 << 30
    assert value("lens_gpu_memory_total_bytes") == 80 << 30
    assert value("lens_gpu_utilization_ratio") == 0.42
