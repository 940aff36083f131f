"""Server configuration: frozen dataclasses built once at start-up and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lens_server.access.keys import ApiKeys


@dataclass(frozen=True)
class BatchConfig:
    """Dynamic batching of one model tower (as Triton's `dynamic_batching`).

    When no batch of the tower runs, what waits is sent at once; otherwise a batch is sent
    when it holds `max_batch_size` inputs, or when its first input has waited
    `max_queue_delay_ms`, whichever comes first. At most `max_queue_size`
    inputs wait per tower; a request that would overflow the queue is refused whole with
    RESOURCE_EXHAUSTED. `instances` batches of a tower may run at once; a tower whose images
    are decoded on the GPU runs at least 2 (one batch decodes while another embeds), and says
    so in the log when that raises the configured value.
    """

    max_batch_size: int = 32
    max_queue_delay_ms: float = 5.0
    max_queue_size: int = 4096
    instances: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.max_queue_size < self.max_batch_size:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be >= max_batch_size "
                f"({self.max_batch_size})"
            )
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_inputs_per_request: int = 1024
    max_image_bytes: int = 32 * 1024 * 1024
    # Decoding a larger image is refused before its pixels are decoded (decompression bombs).
    max_image_pixels: int = 64_000_000
    max_text_chars: int = 65_536
    # Labels of one classifier.
    max_labels: int = 5000
    # Hits one search may ask for.
    max_k: int = 1000
    # Largest gRPC message accepted (a whole batch of encoded images).
    max_message_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_inputs_per_request", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ClientLimits:
    """What one client (an API key, or a peer address where no keys are set) may ask for:
    requests and inputs a second, and requests in flight; 0: no limit. The queue bound of
    each tower (BatchConfig.max_queue_size) holds for all clients together beside these."""

    requests_per_s: float = 0
    inputs_per_s: float = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        for name in ("requests_per_s", "inputs_per_s", "max_in_flight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no limit), got {getattr(self, name)}")


ENGINES = ("auto", "onnx", "program")
IMAGE_DECODE = ("auto", "cpu", "device")
# Other apps' APIs lens can answer (`lens serve --compat`): KServe's v2 inference protocol,
# Immich's machine-learning service, Weaviate's multi2vec-clip inference container.
COMPAT = ("kserve", "immich", "weaviate")


def parse_aliases(specs: list[str]) -> tuple[tuple[str, str], ...]:
    """`ALIAS=MODEL` strings (`--alias`) → ServerConfig.aliases; ValueError names a bad one."""
    pairs = []
    for spec in specs:
        alias, sep, model = spec.partition("=")
        if not sep:
            raise ValueError(f"alias {spec!r}: give ALIAS=MODEL, e.g. ViT-B-32__openai=clip")
        pairs.append((alias.strip(), model.strip()))
    return tuple(pairs)


def _default_workers() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RuntimeConfig:
    """How ONNX Runtime runs the towers.

    `engine` picks what runs a tower: `auto` (ONNX Runtime, or on a GPU the version's fp16
    program where a warm-up measurement finds it faster and within parity), `onnx`, or
    `program` (the fp16 program, on the GPU or else the CPU). `providers` lists ONNX Runtime
    execution providers in order of preference; those not present on the machine are skipped,
    the CPU provider is always last. `intra_op_threads` = 0 lets ONNX Runtime use one thread
    per physical core. `spin`: those threads spin between ops, waiting for the next (the
    lowest latency for a server that has the cores to itself); off where other processes need
    the same cores, as a bulk actor's read and decode tasks do.
    """

    engine: str = "auto"
    # Where JPEGs are decoded: `auto` (on the GPU when the image tower runs on one), `cpu`, or
    # `device` (on the image tower's device, whichever it is).
    image_decode: str = "auto"

    providers: tuple[str, ...] = (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    intra_op_threads: int = 0
    spin: bool = True
    # Threads decoding and resizing images (Pillow releases the GIL while it works).
    decode_workers: int = field(default_factory=_default_workers)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        if self.image_decode not in IMAGE_DECODE:
            raise ValueError(
                f"image_decode must be one of {', '.join(IMAGE_DECODE)}; got {self.image_decode!r}"
            )
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {self.intra_op_threads}")
        if self.decode_workers < 1:
            raise ValueError(f"decode_workers must be >= 1, got {self.decode_workers}")


@dataclass(frozen=True)
class TlsConfig:
    """TLS on both front doors: the server's certificate chain and key (PEM files), and for
    mutual TLS the CA whose certificates clients must present. The files are read and checked
    against each other at start-up (lens_server.tls), before any port opens."""

    cert: Path
    key: Path
    client_ca: Path | None = None


LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ServerConfig:
    repo: Path = Path("models")
    # Where collections live, one folder each.
    collections: Path = Path("collections")
    # The Milvus engine of collections with backend "milvus" ('' none): http://host:19530.
    milvus_uri: str = ""
    # The PostgreSQL + pgvector database of collections with backend "pgvector" ('' none):
    # postgresql://user@host:port/db.
    pg_dsn: str = ""
    host: str = "127.0.0.1"
    port: int = 50051
    # The HTTP/JSON front door, on the same host: 0 any free port, -1 off.
    http_port: int = 8080
    # Whether image inputs may be http(s) URLs the server fetches (public addresses only).
    allow_url_fetch: bool = False
    # Prometheus metrics: recorded unless off; served at /metrics on the HTTP port (-1), or
    # on a port of their own (0: any free port).
    metrics: bool = True
    metrics_port: int = -1
    # The model requests without a model name get; None: the only model of the repository.
    default_model: str | None = None
    batch: BatchConfig = field(default_factory=BatchConfig)
    # Models whose towers batch otherwise than `batch`, as (model name, batching) pairs.
    model_batch: tuple[tuple[str, BatchConfig], ...] = ()
    limits: Limits = field(default_factory=Limits)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # Requests an EmbedStream processes at once, to keep the batcher busy.
    stream_window: int = 4
    # On SIGTERM/SIGINT: health turns NOT_SERVING at once, the ports close `drain_delay_s`
    # later (so a load balancer sees the server leave), and calls in flight get `grace_s`.
    drain_delay_s: float = 2.0
    grace_s: float = 30.0
    # TLS on the gRPC, HTTP and metrics ports; None: plain text.
    tls: TlsConfig | None = None
    # One line per request at info: `text` or `json`.
    log_format: str = "text"
    # Bytes of weights all loaded versions may hold together (a deploy holds the old and the
    # new version at once); 0: no limit.
    memory_budget_bytes: int = 0
    # Seconds between reads of the repository (new models, changed files); 0: only on
    # ReloadRepository.
    poll_s: float = 10.0
    # The keys calls must carry, with their scopes; none: every call is open.
    api_keys: ApiKeys = field(default_factory=ApiKeys)
    client_limits: ClientLimits = field(default_factory=ClientLimits)
    # Other apps' APIs served on the HTTP port beside lens's own (names from COMPAT).
    compat: tuple[str, ...] = ("kserve",)
    # Names other apps give models (Immich's "ViT-B-32__openai") → "NAME[:VERSION]" of a lens
    # model, as (alias, model) pairs.
    aliases: tuple[tuple[str, str], ...] = ()
    # The model Weaviate's multi2vec-clip routes use ("NAME[:VERSION]"); '': the default.
    weaviate_model: str = ""

    def __post_init__(self) -> None:
        if unknown := sorted(set(self.compat) - set(COMPAT)):
            raise ValueError(
                f"compat: unknown API {', '.join(unknown)}; known: {', '.join(COMPAT)}"
            )
        aliased = [alias for alias, _ in self.aliases]
        for alias, model in self.aliases:
            if not alias or not model:
                raise ValueError(f"alias {alias!r}={model!r}: give ALIAS=MODEL, both non-empty")
            if aliased.count(alias) > 1:
                raise ValueError(f"alias {alias!r} is given more than once")
        batched = [name for name, _ in self.model_batch]
        if repeated := sorted({name for name in batched if batched.count(name) > 1}):
            raise ValueError(f"batching of model {repeated[0]!r} is given more than once")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not -1 <= self.http_port < 65536:
            raise ValueError(f"http_port must be in 0..65535, or -1 for none; got {self.http_port}")
        if not -1 <= self.metrics_port < 65536:
            raise ValueError(
                "metrics_port must be in 0..65535, or -1 for the HTTP port; "
                f"got {self.metrics_port}"
            )
        if self.memory_budget_bytes < 0:
            raise ValueError(f"memory_budget_bytes must be >= 0, got {self.memory_budget_bytes}")
        if self.poll_s < 0:
            raise ValueError(f"poll_s must be >= 0, got {self.poll_s}")
        if self.drain_delay_s < 0:
            raise ValueError(f"drain_delay_s must be >= 0, got {self.drain_delay_s}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(
                f"log_format must be one of {', '.join(LOG_FORMATS)}; got {self.log_format!r}"
            )
        if self.stream_window < 1:
            raise ValueError(f"stream_window must be >= 1, got {self.stream_window}")

    def batch_for(self, model: str) -> BatchConfig:
        """The batching of `model`'s towers: its own (`model_batch`), or else `batch`."""
        return next((b for name, b in self.model_batch if name == model), self.batch)
