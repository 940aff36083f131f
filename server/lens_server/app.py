"""Wires configuration → repository → registry (runtimes, batchers) → the core → the gRPC
servicers and the HTTP routes, both front doors in one event loop."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
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
from lens_server.config import ServerConfig
from lens_server.core import Core
from lens_server.deploy import Deployments
from lens_server.http import HttpServer, build_app
from lens_server.http.fetch import FetchConfig
from lens_server.metrics import Metrics, watch
from lens_server.registry import Registry, State
from lens_server.repository import Repository
from lens_server.services.access import AccessInterceptor
from lens_server.services.calls import Calls
from lens_server.services.classify import ClassifiersServicer
from lens_server.services.index import IndexServicer
from lens_server.services.inference import InferenceServicer
from lens_server.services.models import ModelsServicer
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
    """The gRPC and HTTP servers and everything they serve; `start`, then `wait` or `stop`."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.port = 0
        self.http_port = 0
        self._http: HttpServer | None = None
        self.metrics_port = 0
        self._metrics_http: HttpServer | None = None
        self._stopping = False
        # Read and checked before anything else, so that bad files stop start-up at once.
        self.tls: ServerTls | None = load_tls(config.tls) if config.tls else None
        self._decode_pool = ThreadPoolExecutor(
            config.runtime.decode_workers, thread_name_prefix="decode"
        )
        # Prometheus metrics on a registry of this server's own; none with --no-metrics.
        self.metrics = Metrics() if config.metrics else None
        self.registry = Registry(Repository(config.repo), config, self._decode_pool, self.metrics)
        self.collections = Collections(config.collections)
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
        self._health = HealthServicer()
        # Keys, scopes and limits per client, for both front doors.
        self.gate = Gate(config.api_keys, config.client_limits)
        size = config.limits.max_message_bytes
        self._server = grpc.aio.server(
            # Calls first: it refuses undecodable requests before anything reads them.
            interceptors=[Calls(self.metrics), AccessInterceptor(self.gate)],
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
            ],
        )

    async def start(self) -> int:
        """Opens the collections, loads the models they and requests need, resumes unfinished
        re-indexes, then listens; returns the port (useful with port 0)."""
        await asyncio.to_thread(self.collections.open_all)
        await self.registry.start(self.deployments.pinned())
        self.deployments.resume()
        if self.config.poll_s:
            self._watcher = asyncio.get_running_loop().create_task(self.registry.watch())
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
        for service in ("", *served):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self.port

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
        if self._stopping:
            return "shutting down"
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

    async def stop(self) -> None:
        """Stops taking calls, lets those in flight finish (up to `grace_s`), unloads."""
        self._stopping = True
        await self._health.enter_graceful_shutdown()
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
    """Runs a server until SIGINT or SIGTERM, then shuts it down gracefully."""
    server = LensServer(config)
    port = await server.start()
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(server.wait())
    await asyncio.wait([waiter, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
    log.info("shutting down")
    await server.stop()
    waiter.cancel()


def describe_default(registry: Registry) -> str:
    """What the default model is, so a user knows whether its weights mean anything."""
    name = registry.default_model or ""
    version = registry.serving_version(name)
    if not version:
        return f"{name} (not serving)"
    return f"{name}:{version}, {registry.repo.manifest(name, version).describe()}"
