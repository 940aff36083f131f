"""Every call of the lens API, written once for both clients: each method builds a `codec.Call`
and the client makes it, `LensClient` blocking and `AsyncLensClient` awaited (see `codec.rpc`).
Embedding and model calls here; collections and classification in collections.py and
classify.py."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2_grpc
from lens.v1 import (
    classifiers_pb2_grpc,
    index_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

from lens_client import codec
from lens_client.classify import ClassifyCalls
from lens_client.codec import Call, Embeddings, ImageLike, rpc
from lens_client.collections import CollectionCalls


class Calls(CollectionCalls, ClassifyCalls):
    """A connection's settings and stubs, and the calls; a client adds how they run (`_run`)
    on the channel it opens (`_connect`).

    `timeout` is the deadline of each call in seconds; `retries` is how many times a call that
    failed with UNAVAILABLE is retried, with exponential backoff (gRPC's retry policy).
    `model` is `NAME[:VERSION]`, the default for every call; None: the server's default.
    `api_key` is sent with every call as `authorization: Bearer KEY` metadata; None: the
    LENS_API_KEY environment variable, if set.
    `server` is HOST:PORT, or several, comma-separated: replicas that the calls are spread
    over (gRPC's round robin; a replica that goes away is skipped while the others answer).
    TLS: `tls_ca` names PEM CA certificates to trust (None: LENS_TLS_CA, if set), `tls=True`
    trusts the system's store, and `tls_cert` with `tls_key` present a client certificate
    (mutual TLS); each implies TLS. None of them: plain text.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        model: str | None = None,
        timeout: float = 120.0,
        retries: int = 4,
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: str | os.PathLike | None = None,
        tls_cert: str | os.PathLike | None = None,
        tls_key: str | os.PathLike | None = None,
    ) -> None:
        self.address = codec.server_address(server)
        self.model = model
        self.timeout = timeout
        self._metadata = codec.call_metadata(api_key)
        credentials = codec.channel_credentials(tls, tls_ca, tls_cert, tls_key)
        target, balancing = codec.channel_target(self.address)
        options = codec.channel_options(retries) + balancing
        self._channel = self._connect(target, options, credentials)
        self._inference = inference_pb2_grpc.InferenceStub(self._channel)
        self._models = models_pb2_grpc.ModelsStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._index = index_pb2_grpc.IndexStub(self._channel)
        self._classifiers = classifiers_pb2_grpc.ClassifiersStub(self._channel)

    def _connect(
        self,
        address: str,
        options: list[tuple[str, Any]],
        credentials: grpc.ChannelCredentials | None,
    ) -> Any:
        raise NotImplementedError  # a client opens its own kind of channel (None: plain text)

    @rpc
    def embed_images(
        self,
        images: Iterable[ImageLike],
        *,
        model: str | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> Call[np.ndarray]:
        """Images (paths, bytes or PIL images) → float32 (N, dim), in order."""
        inputs = codec.image_inputs(images)
        total = codec.count(images)
        return embedding(self, inputs, model, batch_size, progress, total).then(_vectors)

    @rpc
    def embed_texts(
        self,
        texts: Iterable[str],
        *,
        model: str | None = None,
        batch_size: int = 128,
        progress: bool = False,
    ) -> Call[np.ndarray]:
        """Texts → float32 (N, dim), in order."""
        inputs = codec.text_inputs(texts)
        total = codec.count(texts)
        return embedding(self, inputs, model, batch_size, progress, total).then(_vectors)

    @rpc
    def embed(
        self,
        inputs: Iterable[inference_pb2.Input],
        *,
        model: str | None = None,
        batch_size: int = 32,
        progress: bool = False,
        total: int | None = None,
    ) -> Call[Embeddings]:
        """`lens.v1.Input`s → Embeddings. One batch is one Embed call; more are streamed
        through EmbedStream, so the server works on several at once."""
        return embedding(self, inputs, model, batch_size, progress, total)

    @rpc
    def models(self) -> Call[list[dict[str, Any]]]:
        """Every model of the server with its versions, as plain data."""
        request = models_pb2.ListModelsRequest()
        return Call(self._models.ListModels, request, _model_list, self.timeout)

    @rpc
    def get_model(self, name: str) -> Call[dict[str, Any]]:
        request = models_pb2.GetModelRequest(name=name)
        return Call(self._models.GetModel, request, codec.model_dict, self.timeout)

    @rpc
    def deploy(
        self, name: str, version: int = 0, *, keep_collections: bool = False
    ) -> Call[dict[str, Any]]:
        """Makes `version` (0: the newest) the one `name` serves, with no failed request;
        collections pinned to the previous version are re-indexed in the background unless
        `keep_collections`. Returns the versions, timings and the collections re-indexing."""
        request = models_pb2.DeployRequest(
            name=name, version=version, keep_collections=keep_collections
        )
        return Call(self._models.Deploy, request, codec.deploy_dict, self.timeout)

    @rpc
    def rollback(self, name: str, *, keep_collections: bool = False) -> Call[dict[str, Any]]:
        """Deploys again the version that served before the current one."""
        request = models_pb2.RollbackRequest(name=name, keep_collections=keep_collections)
        return Call(self._models.Rollback, request, codec.deploy_dict, self.timeout)

    @rpc
    def load_model(self, model: str) -> Call[dict[str, Any]]:
        """Loads `NAME[:VERSION]` (default: the newest version) beside the loaded ones."""
        request = codec.version_request(model)
        return Call(self._models.LoadModel, request, codec.model_dict, self.timeout)

    @rpc
    def unload_model(self, model: str) -> Call[dict[str, Any]]:
        """Unloads `NAME:VERSION` (or every version of NAME) once its requests finish."""
        request = codec.version_request(model)
        return Call(self._models.UnloadModel, request, codec.model_dict, self.timeout)

    @rpc
    def reload_models(self) -> Call[list[dict[str, Any]]]:
        """Has the server read its repository now; returns the models as `models()` does."""
        request = models_pb2.ReloadRepositoryRequest()
        return Call(self._models.ReloadRepository, request, _model_list, self.timeout)


def embedding(
    lens: Calls,
    inputs: Iterable[inference_pb2.Input],
    model: str | None,
    batch_size: int,
    progress: bool,
    total: int | None,
) -> Call[Embeddings]:
    """The Embed call of one batch, or the EmbedStream of several (batches are made lazily:
    files are read as they are sent)."""
    batches = codec.requests(inputs, codec.parse_model(model or lens.model), batch_size)
    first = next(batches, None)
    if first is None:
        raise ValueError("nothing to embed")
    second = next(batches, None)
    bar = codec.Progress(total, "input", _rows) if progress else None
    if second is None:
        return Call(lens._inference.Embed, first, codec.embeddings, lens.timeout, progress=bar)
    # A streamed job gets the per-call timeout plus time per input, open-ended if unknown.
    timeout = None if total is None else lens.timeout + total * 0.5
    stream = itertools.chain((first, second), batches)
    return Call(lens._inference.EmbedStream, stream, _joined, timeout, stream=True, progress=bar)


def _joined(responses: list[inference_pb2.EmbedResponse]) -> Embeddings:
    return codec.join([codec.embeddings(r) for r in responses])


def _rows(response: inference_pb2.EmbedResponse) -> int:
    return response.embeddings.rows


def _vectors(result: Embeddings) -> np.ndarray:
    return result.vectors


def _model_list(response: Any) -> list[dict[str, Any]]:
    return [codec.model_dict(m) for m in response.models]
