"""Wires configuration → repository → registry (runtimes, batchers) → the core → the gRPC
servicers and the HTTP routes, both front doors in one event loop."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from lens.v1 import (
    classifiers_pb2,
    classifiers_pb2_grpc,
    index_pb2,
    index_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

from lens_server.access.gate import Gate
from lens_server.classifiers import ClassifierStore
from lens_server.collections import Collections
from lens_server.collections.milvus_engine import MilvusEngine
from lens_server.collections.pgvector_engine import PgEngine
from lens_server.config import ServerConfig
from lens_server.core import Core
from lens_server.deploy import Deployments
from lens_server.http import HttpServer, build_app
from lens_server.http.fetch import FetchConfig
from lens_server.lifecycle import LOADING, Lifecycle
from lens_server.metrics import Metrics, watch
from lens_server.registry import Registry, State
from lens_server.repository import Repository
from lens_server.services.access import AccessInterceptor
from lens_server.services.calls import Calls
from lens_server.services.classify import ClassifiersServicer
from lens_server.services.health import Health
from lens_server.services.index import IndexServicer
from lens_server.services.inference import InferenceServicer
from lens_server.services.models import ModelsServicer
from lens_server.services.starting import StartingInterceptor
from lens_server.shutdown import Signals
from lens_server.tls import ServerTls, load_tls

log = logging.getLogger(__name__)
_LOADED = (State.READY, State.SERVING)

SERVICES = (
    inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["Models"].full_name,
    index_pb2.DESCRIPTOR.services_by_name["Index"].full_name,
    classifiers_pb2.DESCRIPTOR.services_by_name["Classifiers"].full_name,
)


class LensServer:
    """The gRPC and HTTP servers and everything they serve; `start` (`listen`, then `load`),
    then `wait`, and `drain` or `stop`."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.port = 0
        self.http_port = 0
        self._http: HttpServer | None = None
        self.metrics_port = 0
        self._metrics_http: HttpServer | None = None
        # Loading, serving or draining: readiness, and what calls are refused while loading.
        self.lifecycle = Lifecycle()
        self._served: tuple[str, ...] = ()  # the services health reports, '' first
        # Read and checked before anything else, so that bad files stop start-up at once.
        self.tls: ServerTls | None = load_tls(config.tls) if config.tls else None
        self._decode_pool = ThreadPoolExecutor(
            config.runtime.decode_workers, thread_name_prefix="decode"
        )
        # Prometheus metrics on a registry of this server's own; none with --no-metrics.
        self.metrics = Metrics() if config.metrics else None
        self.registry = Registry(Repository(config.repo), config, self._decode_pool, self.metrics)
        milvus = MilvusEngine(config.milvus_uri) if config.milvus_uri else None
        pgvector = PgEngine(config.pg_dsn) if config.pg_dsn else None
        self.collections = Collections(config.collections, milvus, pgvector)
        self.classifiers = ClassifierStore(config.repo)
        self.deployments = Deployments(self.registry, self.collections, self.classifiers)
        self.core = Core.of(
            self.registry,
            self.collections,
            self.classifiers,
            self.deployments,
            config,
            self.metrics,
        )
        if self.metrics:
            watch(self.metrics, self.registry, self.collections)
        self._watcher: asyncio.Task[None] | None = None
        self._health = Health()
        # Keys, scopes and limits per client, for both front doors.
        self.gate = Gate(config.api_keys, config.client_limits)
        size = config.limits.max_message_bytes
        self._server = grpc.aio.server(
            # Calls first: it refuses undecodable requests before anything reads them.
            interceptors=[
                Calls(self.metrics),
                StartingInterceptor(self.lifecycle),
                AccessInterceptor(self.gate),
            ],
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
            ],
        )

    async def start(self) -> int:
        """`listen`, then `load`; returns the gRPC port (useful with port 0)."""
        port = await self.listen()
        await self.load()
        return port

    async def listen(self) -> int:
        """Opens the ports before anything loads, with health NOT_SERVING and readiness 503
        ("loading models"), liveness true, and every call that is not open refused with
        UNAVAILABLE until `load` is done (`lens_server.lifecycle`); returns the gRPC port."""
        server, core = self._server, self.core
        inference_pb2_grpc.add_InferenceServicer_to_server(
            InferenceServicer(core, self.config), server
        )
        classifiers_pb2_grpc.add_ClassifiersServicer_to_server(
            ClassifiersServicer(core.classification), server
        )
        models_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(core.models), server)
        index_pb2_grpc.add_IndexServicer_to_server(IndexServicer(core.indexing), server)
        served = [*SERVICES, *([self._add_kserve()] if "kserve" in self.config.compat else [])]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                *served,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        # NOT_SERVING before the port opens (grpc_health starts "" as SERVING).
        self._served = ("", *served)
        for service in self._served:
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.config.host}:{self.config.port}"
        if self.tls:
            self.port = server.add_secure_port(address, self.tls.grpc_credentials())
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not listen on {self.config.host}:{self.config.port}")
        await server.start()
        if self.config.http_port >= 0:
            app = build_app(
                core,
                self.readiness,
                self.config.limits.max_message_bytes,
                FetchConfig(allow=self.config.allow_url_fetch),
                self.gate,
                metrics=self.metrics,
                expose_metrics=self.config.metrics_port < 0,
                compat=self.config.compat,
                aliases=dict(self.config.aliases),
                weaviate_model=self.config.weaviate_model,
                lifecycle=self.lifecycle,
            )
            self._http = HttpServer(
                app, self.config.host, self.config.http_port, self.config.grace_s, self.tls
            )
            self.http_port = await self._http.start()
        if self.metrics and self.config.metrics_port >= 0:
            self._metrics_http = HttpServer(
                self.metrics.app(),
                self.config.host,
                self.config.metrics_port,
                self.config.grace_s,
                self.tls,
            )
            self.metrics_port = await self._metrics_http.start()
        return self.port

    async def load(self) -> None:
        """Opens the collections, loads the models they and requests need, resumes unfinished
        re-indexes; then calls are taken and health turns SERVING (unless draining already)."""
        await asyncio.to_thread(self.collections.open_all)
        await self.registry.start(self.deployments.pinned())
        self.deployments.resume()
        if self.config.poll_s:
            self._watcher = asyncio.get_running_loop().create_task(self.registry.watch())
        self.lifecycle.loaded = True
        for service in self._served:  # ignored once draining: health stays NOT_SERVING
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def _add_kserve(self) -> str:
        """KServe v2's GRPCInferenceService beside lens.v1; returns its full name."""
        # Imported only where served: tritonclient.grpc's copy of the `inference` protos
        # cannot share a process with lens's (protobuf refuses a name defined twice).
        from lens_server.services import kserve

        servicer = kserve.KServeServicer(self.core, self.readiness)
        return kserve.add_to_server(servicer, self._server)

    def readiness(self) -> str:
        """'' once the default model and every version a collection is pinned to serve or
        are loaded; else why not."""
        if reason := self.lifecycle.reason():
            return reason
        registry = self.registry
        wanted: dict[str, set[int]] = (
            {registry.default_model: set()} if registry.default_model else {}
        )
        for name, versions in {**wanted, **self.deployments.pinned()}.items():
            if name and not registry.serving_version(name):
                return f"model {name} is not serving"
            loaded = {s.version for s in registry.statuses(name) if s.state in _LOADED}
            if missing := sorted(versions - loaded):
                return f"model {name} version {missing[0]} (a collection's) is not loaded"
        return ""

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def drain(self) -> None:
        """What a SIGTERM starts: health NOT_SERVING and readiness 503 at once, while the
        ports go on taking calls for `drain_delay_s` (so a load balancer sees the server
        leave before it refuses anyone); then `stop`."""
        await self._leave()
        if self.config.drain_delay_s:
            await asyncio.sleep(self.config.drain_delay_s)
        await self.stop()

    async def _leave(self) -> None:
        if not self.lifecycle.draining:
            self.lifecycle.draining = True
            await self._health.enter_graceful_shutdown()  # every service NOT_SERVING

    async def stop(self) -> None:
        """Stops taking connections and calls, lets those in flight and open streams finish
        (up to `grace_s`, then cancels them), snapshots the collections, unloads."""
        await self._leave()
        await self._health.close()  # a Watch stream would hold the drain for all of grace_s
        # Both front doors drain at once, each within grace_s.
        http = [s.stop() for s in (self._http, self._metrics_http) if s]
        await asyncio.gather(self._server.stop(self.config.grace_s), *http)
        if self._watcher:
            self._watcher.cancel()
        await self.deployments.close()  # re-indexes resume at the next start
        await asyncio.to_thread(self.collections.close)  # snapshots every collection
        await self.registry.close()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)


async def serve(config: ServerConfig) -> None:
    """Runs a server until SIGINT or SIGTERM, then drains it (`LensServer.drain`); a second
    signal exits at once (`lens_server.shutdown`). The ports open before the models load."""
    server = LensServer(config)
    signals = Signals(asyncio.get_running_loop())
    port = await server.listen()
    print(f"lens listening on {config.host}:{port}, {LOADING}: not ready until done", flush=True)
    await _load(server, signals)
    if signals.received.is_set():  # during start-up: no load balancer has seen it ready
        await server.stop()
        return
    models = server.registry.repo.models()
    if server.registry.default_model:
        print(f"default model: {describe_default(server.registry)}", flush=True)
    scheme = "https" if server.tls else "http"
    if server.tls:
        print(server.tls.describe(), flush=True)
    if server.http_port:
        print(f"HTTP/JSON API on {scheme}://{config.host}:{server.http_port}", flush=True)
    if server.metrics_port:
        print(
            f"Prometheus metrics on {scheme}://{config.host}:{server.metrics_port}/metrics",
            flush=True,
        )
    print(server.gate.describe(), flush=True)
    print(
        f"lens serving {len(models)} model(s) and {len(server.collections.names())} "
        f"collection(s) on {config.host}:{port} "
        f"(default model: {server.registry.default_model or 'none'})",
        flush=True,
    )
    waiter = asyncio.create_task(server.wait())
    received = asyncio.create_task(signals.received.wait())
    await asyncio.wait([waiter, received], return_when="FIRST_COMPLETED")
    print(
        f"lens: {signals.name or 'stopped'}: draining: health NOT_SERVING now, ports close in "
        f"{config.drain_delay_s:g} s, calls in flight get up to {config.grace_s:g} s more; "
        "a second signal exits at once",
        flush=True,
    )
    await server.drain()
    # Only now: cancelling the wait for termination earlier would cancel the shutdown itself.
    waiter.cancel()
    received.cancel()
    print("lens: drained, collections snapshotted; exiting", flush=True)


async def _load(server: LensServer, signals: Signals) -> None:
    """`server.load()`; a signal meanwhile stops the server once loading is done (models
    load in threads that cannot be interrupted), a second one exits at once."""
    loading = asyncio.create_task(server.load())
    received = asyncio.create_task(signals.received.wait())
    await asyncio.wait([loading, received], return_when="FIRST_COMPLETED")
    received.cancel()
    if not loading.done():
        print(
            f"lens: {signals.name} while loading: stopping once loading is done; a second "
            "signal exits at once",
            flush=True,
        )
    try:
        await loading
    except BaseException:
        await server.stop()
        raise


def describe_default(registry: Registry) -> str:
    """What the default model is, so a user knows whether its weights mean anything."""
    name = registry.default_model or ""
    version = registry.serving_version(name)
    if not version:
        return f"{name} (not serving)"
    return f"{name}:{version}, {registry.repo.manifest(name, version).describe()}"
