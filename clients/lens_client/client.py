"""The synchronous client.

with LensClient("127.0.0.1:50051") as lens:
    vectors = lens.embed_images(["cat.jpg", "dog.png"])   # (2, dim) float32
    vectors = lens.embed_texts(["a cat", "a dog"])
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lens.v1 import (
    classifiers_pb2_grpc,
    index_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from tqdm import tqdm

from lens_client import codec
from lens_client.classify import ClassifyCalls
from lens_client.codec import Embeddings, ImageLike, LensClientError, rpc_errors
from lens_client.collections import CollectionCalls


class LensClient(CollectionCalls, ClassifyCalls):
    """A connection to a lens server.

    `timeout` is the deadline of each call in seconds; `retries` is how many times a call that
    failed with UNAVAILABLE is retried, with exponential backoff (gRPC's retry policy).
    `model` is `NAME[:VERSION]`, the default for every call; None: the server's default.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        model: str | None = None,
        timeout: float = 120.0,
        retries: int = 4,
    ) -> None:
        self.address = codec.server_address(server)
        self.model = model
        self.timeout = timeout
        self._channel = grpc.insecure_channel(self.address, codec.channel_options(retries))
        self._inference = inference_pb2_grpc.InferenceStub(self._channel)
        self._models = models_pb2_grpc.ModelsStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._index = index_pb2_grpc.IndexStub(self._channel)
        self._classifiers = classifiers_pb2_grpc.ClassifiersStub(self._channel)

    def embed_images(
        self,
        images: Iterable[ImageLike],
        *,
        model: str | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> np.ndarray:
        """Images (paths, bytes or PIL images) → float32 (N, dim), in order."""
        return self.embed(
            codec.image_inputs(images),
            model=model,
            batch_size=batch_size,
            progress=progress,
            total=codec.count(images),
        ).vectors

    def embed_texts(
        self,
        texts: Iterable[str],
        *,
        model: str | None = None,
        batch_size: int = 128,
        progress: bool = False,
    ) -> np.ndarray:
        """Texts → float32 (N, dim), in order."""
        return self.embed(
            codec.text_inputs(texts),
            model=model,
            batch_size=batch_size,
            progress=progress,
            total=codec.count(texts),
        ).vectors

    def embed(
        self,
        inputs: Iterable[inference_pb2.Input],
        *,
        model: str | None = None,
        batch_size: int = 32,
        progress: bool = False,
        total: int | None = None,
    ) -> Embeddings:
        """`lens.v1.Input`s → Embeddings. One batch is one Embed call; more are streamed
        through EmbedStream, so the server works on several at once."""
        ref = codec.parse_model(model or self.model)
        batches = codec.requests(inputs, ref, batch_size)
        first = next(batches, None)
        if first is None:
            raise ValueError("nothing to embed")
        second = next(batches, None)
        bar = tqdm(total=total, unit="input", disable=not progress)
        try:
            if second is None:
                responses: Iterator[inference_pb2.EmbedResponse] = iter(
                    [self._inference.Embed(first, timeout=self.timeout)]
                )
            else:
                stream = itertools.chain((first, second), batches)
                responses = self._inference.EmbedStream(stream, timeout=self._job_timeout(total))
            parts = []
            for response in responses:
                parts.append(codec.embeddings(response))
                bar.update(parts[-1].vectors.shape[0])
            return codec.join(parts)
        except grpc.RpcError as e:
            raise LensClientError.from_rpc(e) from None
        finally:
            bar.close()

    def models(self) -> list[dict[str, Any]]:
        """Every model of the server with its versions, as plain data."""
        try:
            response = self._models.ListModels(models_pb2.ListModelsRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise LensClientError.from_rpc(e) from None
        return [codec.model_dict(m) for m in response.models]

    def get_model(self, name: str) -> dict[str, Any]:
        try:
            info = self._models.GetModel(
                models_pb2.GetModelRequest(name=name), timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise LensClientError.from_rpc(e) from None
        return codec.model_dict(info)

    @rpc_errors
    def deploy(self, name: str, version: int = 0, *, keep_collections: bool = False) -> dict:
        """Makes `version` (0: the newest) the one `name` serves, with no failed request;
        collections pinned to the previous version are re-indexed in the background unless
        `keep_collections`. Returns the versions, timings and the collections re-indexing."""
        request = models_pb2.DeployRequest(
            name=name, version=version, keep_collections=keep_collections
        )
        return codec.deploy_dict(self._models.Deploy(request, timeout=self.timeout))

    @rpc_errors
    def rollback(self, name: str, *, keep_collections: bool = False) -> dict:
        """Deploys again the version that served before the current one."""
        request = models_pb2.RollbackRequest(name=name, keep_collections=keep_collections)
        return codec.deploy_dict(self._models.Rollback(request, timeout=self.timeout))

    @rpc_errors
    def load_model(self, model: str) -> dict[str, Any]:
        """Loads `NAME[:VERSION]` (default: the newest version) beside the loaded ones."""
        request = codec.version_request(model)
        return codec.model_dict(self._models.LoadModel(request, timeout=self.timeout))

    @rpc_errors
    def unload_model(self, model: str) -> dict[str, Any]:
        """Unloads `NAME:VERSION` (or every version of NAME) once its requests finish."""
        request = codec.version_request(model)
        return codec.model_dict(self._models.UnloadModel(request, timeout=self.timeout))

    @rpc_errors
    def reload_models(self) -> list[dict[str, Any]]:
        """Has the server read its repository now; returns the models as `models()` does."""
        request = models_pb2.ReloadRepositoryRequest()
        response = self._models.ReloadRepository(request, timeout=self.timeout)
        return [codec.model_dict(m) for m in response.models]

    def healthy(self, service: str = "") -> bool:
        """Whether the server answers SERVING to the standard gRPC health check."""
        try:
            response = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=min(self.timeout, 10)
            )
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def _job_timeout(self, total: int | None) -> float | None:
        # A streamed job gets the per-call timeout per batch-worth of time, open-ended if unknown.
        return None if total is None else self.timeout + total * 0.5

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LensClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
