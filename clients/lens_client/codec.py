"""What the sync and asyncio clients share: channels, calls described once (`Call`, `rpc`),
inputs → requests, responses → numpy."""

from __future__ import annotations

import functools
import inspect
import io
import json
import os
import socket
import types
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

import grpc
import numpy as np
from lens.v1 import common_pb2, inference_pb2, models_pb2
from PIL import Image
from tqdm import tqdm

DEFAULT_SERVER = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

# An image: a path, encoded bytes, or a PIL image (sent as PNG).
ImageLike = str | os.PathLike | bytes | Image.Image


class LensClientError(Exception):
    """A call the server refused or could not answer: the gRPC status and its message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> LensClientError:
        return cls(error.code(), error.details() or "")


T = TypeVar("T")
U = TypeVar("U")
P = ParamSpec("P")


@dataclass(frozen=True)
class Progress:
    """A progress bar over a call's responses; `count`: the items one response stands for."""

    total: int | None
    unit: str
    count: Callable[[Any], int]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One RPC described, not yet made, so that both clients make the same one: `LensClient`
    blocking, `AsyncLensClient` awaited, each on its own channel's stub (`method`)."""

    method: Any  # a stub's multi-callable: the client's own, sync or asyncio
    request: Any  # a message; for a `stream` call, an iterator of messages
    decode: Callable[[Any], T]  # the response → the result; of a stream, the list of responses
    timeout: float | None  # seconds; None: no deadline (jobs of unknown length)
    stream: bool = False  # messages go and come as streams
    progress: Progress | None = None

    def then(self, step: Callable[[T], U]) -> Call[U]:
        """The same call, its result passed through `step`."""
        decode = self.decode

        def chained(answer: Any) -> U:
            return step(decode(answer))

        return Call(self.method, self.request, chained, self.timeout, self.stream, self.progress)


def nothing(response: object) -> None:
    """The decode of a call whose answer says nothing more than that it succeeded."""
    return None


class Responses(Generic[T]):
    """A call's responses as they come, counted on its progress bar, then decoded. In the `with`
    block, a gRPC error becomes a LensClientError (the status and its message)."""

    def __init__(self, call: Call[T]) -> None:
        self.call = call
        self._received: list[Any] = []
        progress = call.progress
        self._bar = tqdm(
            total=progress.total if progress else None,
            unit=progress.unit if progress else "it",
            disable=progress is None,
        )

    def add(self, response: Any) -> None:
        self._received.append(response)
        if self.call.progress is not None:
            self._bar.update(self.call.progress.count(response))

    def result(self) -> T:
        return self.call.decode(self._received if self.call.stream else self._received[0])

    def __enter__(self) -> Responses[T]:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        self._bar.close()
        if isinstance(error, grpc.RpcError):
            raise LensClientError.from_rpc(error) from None


class _Blocking(Protocol):
    def _run(self, make: Callable[[], Call[U]]) -> U: ...


class _Awaited(Protocol):
    def _run(self, make: Callable[[], Call[U]]) -> Coroutine[Any, Any, U]: ...


class rpc(Generic[P, T]):  # lower case: used as a decorator
    """A client method written once for both clients: the decorated method builds the `Call`,
    and the client it is read from makes it, through its `_run`: `LensClient`'s returns the
    result, `AsyncLensClient`'s a coroutine of it. Argument errors (ValueError) come from
    building, so the asyncio client raises them when awaited, as a coroutine would."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        def method(lens: Any, /, *args: Any, **kwargs: Any) -> Any:
            return lens._run(functools.partial(build, lens, *args, **kwargs))

        functools.update_wrapper(method, build)
        # help() and inspect show the arguments, not the Call that `build` returns.
        signature = inspect.signature(build).replace(return_annotation=inspect.Signature.empty)
        method.__signature__ = signature  # type: ignore[attr-defined]
        self._method = method

    @overload
    def __get__(self, lens: None, owner: type) -> Callable[..., Any]: ...
    @overload
    def __get__(self, lens: _Awaited, owner: type) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, lens: _Blocking, owner: type) -> Callable[P, T]: ...
    def __get__(self, lens: Any, owner: type) -> Any:
        return self._method if lens is None else types.MethodType(self._method, lens)


@dataclass(frozen=True)
class Embeddings:
    """L2-normalised vectors (N, dim), in input order, and the model version that made them."""

    vectors: np.ndarray
    model: str
    version: int


def server_address(server: str | None) -> str:
    return server or os.environ.get("LENS_SERVER") or DEFAULT_SERVER


def replicas(server: str) -> list[str]:
    """The HOST:PORT addresses of `server`, a comma-separated list of lens replicas."""
    addresses = [a.strip() for a in server.split(",")]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"server address {address!r} is not HOST:PORT")
    return addresses


def channel_target(server: str) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target of `server`, and the channel options it needs.

    One address (or a gRPC target such as `dns:///lens.svc:50051`) is used as it is. Several,
    comma-separated, are replicas the channel balances with gRPC's `round_robin` policy: their
    hosts are resolved here, once, into one static `ipv4:`/`ipv6:` target (gRPC's own resolver
    for a list takes only IP literals), and TLS checks the certificate against the first host.
    """
    if "," not in server:
        return server, []
    resolved, family = [], None
    for address in replicas(server):
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ValueError(f"server address {address!r}: {e.strerror}") from None
        kind, *_, (ip, *_) = info[0]
        if family not in (None, kind):
            raise ValueError(f"server addresses mix IPv4 and IPv6 ({server!r}): use one family")
        family = kind
        resolved.append(f"[{ip}]:{port}" if kind == socket.AF_INET6 else f"{ip}:{port}")
    scheme = "ipv6" if family == socket.AF_INET6 else "ipv4"
    first_host = replicas(server)[0].rpartition(":")[0].strip("[]")
    return f"{scheme}:{','.join(resolved)}", [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.default_authority", first_host),
    ]


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: the API key (`api_key`, else LENS_API_KEY), if any."""
    key = api_key or os.environ.get("LENS_API_KEY")
    return (("authorization", f"Bearer {key}"),) if key else ()


def channel_credentials(
    tls: bool = False,
    ca: str | os.PathLike | None = None,
    cert: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials of a channel, or None for plain text. `ca` (else LENS_TLS_CA): PEM CA
    certificates to trust for the server's certificate; `tls` alone: the system's trust
    store; `cert` and `key`: the client's certificate and key (mutual TLS). Each implies TLS.
    ValueError names a file that cannot be read, or a certificate without its key."""
    ca = ca or os.environ.get("LENS_TLS_CA") or None
    if (cert is None) != (key is None):
        raise ValueError("a TLS client certificate needs its key: give both, or neither")
    if not (tls or ca or cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca, "CA") if ca else None,
        private_key=_read_pem(key, "client key") if key else None,
        certificate_chain=_read_pem(cert, "client certificate") if cert else None,
    )


def _read_pem(path: str | os.PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"TLS {what} {path}: {e.strerror or e}") from None


def parse_model(spec: str | None) -> common_pb2.ModelRef:
    """`NAME[:VERSION]` → ModelRef; None or "" → the server's default model."""
    if not spec:
        return common_pb2.ModelRef()
    name, _, version = spec.partition(":")
    if version and not version.isdigit():
        raise ValueError(f"model {spec!r}: the version after ':' must be a number")
    return common_pb2.ModelRef(name=name, version=int(version or 0))


def channel_options(retries: int) -> list[tuple[str, Any]]:
    """Message size limits and gRPC's own retry of UNAVAILABLE with exponential backoff."""
    service_config = {
        "methodConfig": [
            {
                "name": [{"service": "lens.v1.Inference"}, {"service": "lens.v1.Models"}],
                "retryPolicy": {
                    "maxAttempts": max(2, min(retries + 1, 5)),
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2.0,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1 if retries else 0),
        ("grpc.service_config", json.dumps(service_config)),
    ]


def count(items: Iterable[Any]) -> int | None:
    """How many items, when that is known without consuming them (for progress bars)."""
    return len(items) if isinstance(items, Sequence) else None


def image_bytes(image: ImageLike) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"not an image (path, bytes or PIL image): {type(image).__name__}")


def image_inputs(images: Iterable[ImageLike]) -> Iterator[inference_pb2.Input]:
    return (inference_pb2.Input(image=image_bytes(image)) for image in images)


def text_inputs(texts: Iterable[str]) -> Iterator[inference_pb2.Input]:
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"not a text: {type(text).__name__}")
        yield inference_pb2.Input(text=text)


def requests(
    inputs: Iterable[inference_pb2.Input], model: common_pb2.ModelRef, batch_size: int
) -> Iterator[inference_pb2.EmbedRequest]:
    """Inputs cut into requests of at most `batch_size`, lazily (files are read as sent)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[inference_pb2.Input] = []
    for item in inputs:
        batch.append(item)
        if len(batch) == batch_size:
            yield inference_pb2.EmbedRequest(inputs=batch, model=model)
            batch = []
    if batch:
        yield inference_pb2.EmbedRequest(inputs=batch, model=model)


def embeddings(response: inference_pb2.EmbedResponse) -> Embeddings:
    matrix = response.embeddings
    vectors = np.frombuffer(matrix.data, dtype="<f4").reshape(matrix.rows, matrix.cols)
    return Embeddings(vectors.astype(np.float32), response.model, response.version)


def join(parts: Sequence[Embeddings]) -> Embeddings:
    """Responses of one job → one result; the whole job must come from one model version."""
    if not parts:
        raise ValueError("nothing to embed")
    served = {(p.model, p.version) for p in parts}
    if len(served) > 1:
        raise LensClientError(
            grpc.StatusCode.ABORTED,
            f"the model version changed during the job ({sorted(served)}); run it again",
        )
    return Embeddings(np.concatenate([p.vectors for p in parts]), parts[0].model, parts[0].version)


def version_request(model: str) -> models_pb2.ModelVersionRequest:
    """`NAME[:VERSION]` → the request of LoadModel and UnloadModel."""
    ref = parse_model(model)
    return models_pb2.ModelVersionRequest(name=ref.name, version=ref.version)


def deploy_dict(response: models_pb2.DeployResponse) -> dict[str, Any]:
    return {
        "model": response.model.name,
        "version": response.version,
        "previous_version": response.previous_version,
        "reindexing": list(response.reindexing),
        "load_seconds": response.load_seconds,
        "swap_seconds": response.swap_seconds,
    }


def model_dict(info: models_pb2.ModelInfo) -> dict[str, Any]:
    """ModelInfo → plain data (for JSON and for Python callers)."""
    return {
        "name": info.name,
        "kind": info.kind,
        "dim": info.dim,
        "modalities": [
            common_pb2.Modality.Name(m).removeprefix("MODALITY_").lower() for m in info.modalities
        ],
        "serving_version": info.serving_version,
        "previous_version": info.previous_version,
        "default": info.is_default,
        "memory_bytes": info.memory_bytes,
        "memory_budget_bytes": info.memory_budget_bytes,
        "versions": [
            {
                "version": v.version,
                "state": models_pb2.VersionInfo.State.Name(v.state).removeprefix("STATE_").lower(),
                "reason": v.reason,
                "providers": list(v.providers),
                "image_size": v.image_size,
                "context_length": v.context_length,
                "source": v.source,
                "image_parity": v.image_parity,
                "text_parity": v.text_parity,
                "memory_bytes": v.memory_bytes,
                "in_flight": v.in_flight,
                "runtimes": {
                    common_pb2.Modality.Name(r.modality).removeprefix("MODALITY_").lower(): {
                        "runtime": r.runtime,
                        "trials": [
                            {
                                "runtime": t.runtime,
                                "providers": list(t.providers),
                                "items_per_second": t.items_per_second,
                                "min_cosine": t.min_cosine,
                                "error": t.error,
                            }
                            for t in r.trials
                        ],
                    }
                    for r in v.runtimes
                },
            }
            for v in info.versions
        ],
    }
