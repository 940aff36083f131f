"""The server's Prometheus metrics: every family is defined here, on a registry each server
owns (so several servers in one process keep apart), and served as text at `/metrics`.

Names follow Prometheus's conventions: `lens_` first, base units last (`_seconds`, `_bytes`),
`_total` on counters. Requests, towers, searches and deploys are counted as they happen;
model versions, collections and the GPU are read when Prometheus scrapes (`collectors`).

- requests: `lens_requests_total` and `lens_request_duration_seconds` by transport (grpc,
  http), method (the gRPC method or the HTTP route template), model (the loaded model that
  served it; '' for none) and code (the gRPC status name or the HTTP status);
  `lens_received_bytes_total` by transport and method; `lens_undecodable_requests_total` by
  gRPC method.
- towers, by model, version and modality: `lens_batch_queue_inputs`,
  `lens_batch_queue_wait_seconds`, `lens_batch_size`, `lens_batch_inference_seconds`,
  `lens_batch_inputs_total`, `lens_batch_failed_inputs_total` (by reason: the gRPC status
  name of the error the inputs got, or CANCELLED), `lens_preprocess_seconds` (one image
  decoded, or a request's texts tokenized).
- `lens_collection_search_seconds` by collection; `lens_deploys_total` by model, action
  (deploy, rollback) and outcome (succeeded, unchanged, or the error's status name).
- read at scrape time (`watch`): per model version `lens_model_version_state` (1 for its
  state), `_memory_bytes`, `_runtime_info` (runtime and providers per tower),
  `_requests_in_flight`; per collection `lens_collection_items` (by index type),
  `_index_memory_bytes`, `_log_entries`, `_snapshot_age_seconds`, `_rebuilding`,
  `_reindex_done_items` and `_reindex_all_items`; where a GPU is used, `lens_gpu_*`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import time
from collections.abc import Iterator, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lens_server.errors import LensError, status_of
from lens_server.gpu import cuda_available

if TYPE_CHECKING:  # both import lens_server.model, which records into this module
    from lens_server.collections import Collections
    from lens_server.registry import Registry

REQUEST_LABELS = ("transport", "method", "model", "code")
TOWER_LABELS = ("model", "version", "modality")
# What a batcher's inputs can fail with (pre-set to 0, so that the series exist from start).
FAIL_REASONS = (
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "INVALID_ARGUMENT",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "INTERNAL",
)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_WAIT = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Call:
    """What handling one request tells its front door, for its metrics and its log line
    (`lens_server.logs`): its id, the model version that served it, the inputs it embedded,
    and the API key that made it ('' where none did)."""

    request_id: str = ""
    model: str = ""
    version: int = 0
    inputs: int = 0
    client: str = ""


_CALL: ContextVar[Call | None] = ContextVar("lens_call", default=None)


def current_call() -> Call | None:
    """The `Call` of the request being handled here; None outside one."""
    return _CALL.get()


@contextlib.contextmanager
def call() -> Iterator[Call]:
    """The current request's `Call`, for the front door that counts it. Tasks and threads the
    request starts copy the context, and so share this one `Call`."""
    current = Call()
    token = _CALL.set(current)
    try:
        yield current
    finally:
        _CALL.reset(token)


def note_model(name: str, version: int = 0) -> None:
    """Names the model version serving the current request (where a request takes hold of a
    loaded version: only loaded models' names become labels, never whatever a client sent)."""
    current = _CALL.get()
    if current is not None:
        current.model, current.version = name, version


def note_inputs(count: int) -> None:
    """Adds `count` inputs embedded for the current request."""
    current = _CALL.get()
    if current is not None:
        current.inputs += count


def note_client(name: str) -> None:
    """Names who made the current request (an API key's entry, never the key)."""
    current = _CALL.get()
    if current is not None:
        current.client = name


class Metrics:
    """Every metric of one server, on its own `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lens_requests_total", "Requests answered.", REQUEST_LABELS, registry=r
        )
        self.request_seconds = Histogram(
            "lens_request_duration_seconds",
            "Time from a request's arrival to its answer.",
            REQUEST_LABELS,
            buckets=_LATENCY,
            registry=r,
        )
        self.received = Counter(
            "lens_received_bytes_total",
            "Bytes of request messages (gRPC) and bodies (HTTP) received.",
            ("transport", "method"),
            registry=r,
        )
        self.undecodable = Counter(
            "lens_undecodable_requests_total",
            "gRPC requests whose bytes are not a valid message for their method.",
            ("method",),
            registry=r,
        )
        self.queue_inputs = Gauge(
            "lens_batch_queue_inputs",
            "Inputs waiting in a tower's queue.",
            TOWER_LABELS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "lens_batch_queue_wait_seconds",
            "Time an input waited in its tower's queue before its batch started.",
            TOWER_LABELS,
            buckets=_WAIT,
            registry=r,
        )
        self.batch_size = Histogram(
            "lens_batch_size", "Inputs per batch run.", TOWER_LABELS, buckets=_SIZES, registry=r
        )
        self.inference = Histogram(
            "lens_batch_inference_seconds",
            "Time a batch took in its tower.",
            TOWER_LABELS,
            buckets=_LATENCY,
            registry=r,
        )
        self.inputs = Counter(
            "lens_batch_inputs_total", "Inputs run through a tower.", TOWER_LABELS, registry=r
        )
        self.failed_inputs = Counter(
            "lens_batch_failed_inputs_total",
            "Inputs that got an error instead of a vector, by the error's status name.",
            (*TOWER_LABELS, "reason"),
            registry=r,
        )
        self.preprocess = Histogram(
            "lens_preprocess_seconds",
            "Time to decode one image or tokenize one request's texts.",
            TOWER_LABELS,
            buckets=_WAIT,
            registry=r,
        )
        self.search_seconds = Histogram(
            "lens_collection_search_seconds",
            "Time a collection's index took to answer a search (queries already embedded).",
            ("collection",),
            buckets=_LATENCY,
            registry=r,
        )
        self.deploys = Counter(
            "lens_deploys_total",
            "Deploys and rollbacks, by outcome.",
            ("model", "action", "outcome"),
            registry=r,
        )

    # -- recording ---------------------------------------------------------------------------

    def request(self, transport: str, method: str, model: str, code: str, seconds: float) -> None:
        self.requests.labels(transport, method, model, code).inc()
        self.request_seconds.labels(transport, method, model, code).observe(seconds)

    def tower(self, model: str, version: int, modality: str) -> TowerMetrics:
        return TowerMetrics(self, (model, str(version), modality))

    @contextlib.contextmanager
    def searching(self, collection: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.search_seconds.labels(collection).observe(time.perf_counter() - started)

    def deployed(self, model: str, action: str, outcome: str | BaseException) -> None:
        if isinstance(outcome, BaseException):
            outcome = status_of(outcome)[0].grpc
        self.deploys.labels(model, action, outcome).inc()

    # -- exposition --------------------------------------------------------------------------

    async def scrape(self) -> bytes:
        """The text exposition. Collectors read collections (SQLite) and model files, so the
        scrape runs on a worker thread, not the event loop."""
        return await asyncio.to_thread(generate_latest, self.registry)

    def app(self) -> Exposition:
        """A bare ASGI app serving the exposition (`--metrics-port`)."""
        return Exposition(self)


class Exposition:
    """Answers every GET with the metrics, whatever its path."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, b"GET /metrics\n", "text/plain")
            return
        await _answer(send, 200, await self.metrics.scrape(), CONTENT_TYPE_LATEST)


async def _answer(send: Any, status: int, body: bytes, media: str) -> None:
    headers = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class TowerMetrics:
    """One tower's series: the `batching.BatchObserver` of its batcher, and its preprocessing
    time. Label children are looked up once here, so recording is a lock and an add."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str]) -> None:
        self._queue = metrics.queue_inputs.labels(*labels)
        self._wait = metrics.queue_wait.labels(*labels)
        self._size = metrics.batch_size.labels(*labels)
        self._inference = metrics.inference.labels(*labels)
        self._inputs = metrics.inputs.labels(*labels)
        self._preprocess = metrics.preprocess.labels(*labels)
        self._failed = {r: metrics.failed_inputs.labels(*labels, r) for r in FAIL_REASONS}
        self._failed_family, self._labels = metrics.failed_inputs, labels

    def queued(self, depth: int) -> None:
        self._queue.set(depth)

    def waited(self, seconds: Sequence[float]) -> None:
        for s in seconds:
            self._wait.observe(s)

    def ran(self, size: int, seconds: float) -> None:
        self._size.observe(size)
        self._inference.observe(seconds)
        self._inputs.inc(size)

    def failed(self, reason: str, count: int) -> None:
        child = self._failed.get(reason) or self._failed_family.labels(*self._labels, reason)
        child.inc(count)

    def preprocessed(self, seconds: float) -> None:
        self._preprocess.observe(seconds)

    def close(self) -> None:
        """The tower is unloaded: nothing waits in it any more."""
        self._queue.set(0)


# -- read at scrape time ---------------------------------------------------------------------


def watch(metrics: Metrics, registry: Registry, collections: Collections) -> None:
    """Registers the collectors that read the model versions, the collections and (where the
    server uses one) the GPU whenever Prometheus scrapes."""
    metrics.registry.register(_Versions(registry))
    metrics.registry.register(_Collections(collections))
    if cuda_available():  # decided without importing torch on a machine with no driver
        metrics.registry.register(_Gpu())


class _Versions(Collector):
    """Every version of every model: its state, and for a loaded one its memory, runtimes and
    requests in flight."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        from lens_server.registry import State

        labels = ["model", "version"]
        state = GaugeMetricFamily(
            "lens_model_version_state",
            "1 for the state a model version is in, 0 for the others.",
            labels=[*labels, "state"],
        )
        memory = GaugeMetricFamily(
            "lens_model_version_memory_bytes",
            "Bytes of weights a loaded version holds.",
            labels=labels,
        )
        runtime = GaugeMetricFamily(
            "lens_model_version_runtime_info",
            "The runtime and execution providers each tower of a loaded version runs on.",
            labels=[*labels, "modality", "runtime", "providers"],
        )
        in_flight = GaugeMetricFamily(
            "lens_model_version_requests_in_flight",
            "Requests holding a loaded version now.",
            labels=labels,
        )
        for name in self._registry.repo.models():
            try:
                statuses = self._registry.statuses(name)
            except LensError:  # removed from the repository meanwhile
                continue
            for status in statuses:
                key = [name, str(status.version)]
                for s in State:
                    state.add_metric([*key, s.value], 1.0 if status.state == s else 0.0)
                if status.state in (State.READY, State.SERVING):
                    memory.add_metric(key, status.memory_bytes)
                    in_flight.add_metric(key, status.in_flight)
                    for modality, choice in sorted(status.runtimes.items()):
                        providers = ",".join(choice.tower.providers)
                        runtime.add_metric([*key, modality, choice.runtime, providers], 1.0)
        yield from (state, memory, runtime, in_flight)


class _Collections(Collector):
    """Every collection: items, index, the log a restart replays, snapshot age, re-index."""

    def __init__(self, collections: Collections) -> None:
        self._collections = collections

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str, *extra: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["collection", *extra])

        items = gauge("lens_collection_items", "Items stored.", "index_type")
        memory = gauge("lens_collection_index_memory_bytes", "Bytes the index holds in memory.")
        log_entries = gauge(
            "lens_collection_log_entries",
            "Writes since the newest snapshot: what opening the collection replays.",
        )
        age = gauge(
            "lens_collection_snapshot_age_seconds",
            "Seconds since the newest snapshot was written (absent before the first).",
        )
        rebuilding = gauge("lens_collection_rebuilding", "1 while the index is rebuilt.")
        done = gauge("lens_collection_reindex_done_items", "Items re-embedded by the re-index.")
        total = gauge("lens_collection_reindex_all_items", "Items the re-index re-embeds.")
        now = time.time()
        for name in self._collections.names():
            try:
                info = self._collections.get(name).describe()
            except Exception:  # dropped during the scrape: its store is closed
                continue
            items.add_metric([name, info["built_type"]], info["count"])
            memory.add_metric([name], info["memory_bytes"])
            log_entries.add_metric([name], info["seq"] - info["snapshot_seq"])
            if info["snapshot_time"]:
                age.add_metric([name], now - info["snapshot_time"])
            rebuilding.add_metric([name], float(info["rebuilding"]))
            if (reindex := info["reindex"]) is not None:
                done.add_metric([name], reindex.done)
                total.add_metric([name], reindex.total)
        yield from (items, memory, log_entries, age, rebuilding, done, total)


class _Gpu(Collector):
    """GPU memory and utilisation, from what the process has already: torch's allocator
    where torch has initialised CUDA here, and NVML where pynvml is installed."""

    def __init__(self) -> None:
        self._nvml: Any = None

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            allocated = GaugeMetricFamily(
                "lens_gpu_torch_allocated_bytes",
                "GPU memory torch's tensors hold.",
                labels=["device"],
            )
            reserved = GaugeMetricFamily(
                "lens_gpu_torch_reserved_bytes",
                "GPU memory torch's caching allocator holds.",
                labels=["device"],
            )
            for i in range(torch.cuda.device_count()):
                allocated.add_metric([str(i)], torch.cuda.memory_allocated(i))
                reserved.add_metric([str(i)], torch.cuda.memory_reserved(i))
            yield from (allocated, reserved)
        if (nvml := self._open_nvml()) is not None:
            yield from _nvml_families(nvml)

    def _open_nvml(self) -> Any:
        if self._nvml is None and importlib.util.find_spec("pynvml") is not None:
            import pynvml

            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError:
                self._nvml = False
            else:
                self._nvml = pynvml
        return self._nvml or None


def _nvml_families(nvml: Any) -> Iterator[Metric]:
    used = GaugeMetricFamily(
        "lens_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=["device"]
    )
    total = GaugeMetricFamily(
        "lens_gpu_memory_total_bytes", "GPU memory on the device.", labels=["device"]
    )
    busy = GaugeMetricFamily(
        "lens_gpu_utilization_ratio",
        "Share of the last sample period a kernel ran on the GPU (0..1).",
        labels=["device"],
    )
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        info = nvml.nvmlDeviceGetMemoryInfo(handle)
        used.add_metric([str(i)], info.used)
        total.add_metric([str(i)], info.total)
        busy.add_metric([str(i)], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
    yield from (used, total, busy)
