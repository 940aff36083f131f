"""The asyncio client: the same calls as `LensClient`, awaited.

async with AsyncLensClient() as lens:
    vectors = await lens.embed_texts(["a cat", "a dog"])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lens.v1 import inference_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc
from tqdm import tqdm

from lens_client import codec
from lens_client.codec import Embeddings, ImageLike, LensClientError

T = TypeVar("T")


class AsyncLensClient:
    """An asyncio connection to a lens server; arguments as `LensClient`'s."""

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
        self._channel = grpc.aio.insecure_channel(self.address, codec.channel_options(retries))
        self._inference = inference_pb2_grpc.InferenceStub(self._channel)
        self._models = models_pb2_grpc.ModelsStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def embed_images(
        self,
        images: Iterable[ImageLike],
        *,
        model: str | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> np.ndarray:
        result = await self.embed(
            codec.image_inputs(images),
            model=model,
            batch_size=batch_size,
            progress=progress,
            total=codec.count(images),
        )
        return result.vectors

    async def embed_texts(
        self,
        texts: Iterable[str],
        *,
        model: str | None = None,
        batch_size: int = 128,
        progress: bool = False,
    ) -> np.ndarray:
        result = await self.embed(
            codec.text_inputs(texts),
            model=model,
            batch_size=batch_size,
            progress=progress,
            total=codec.count(texts),
        )
        return result.vectors

    async def embed(
        self,
        inputs: Iterable[inference_pb2.Input],
        *,
        model: str | None = None,
        batch_size: int = 32,
        progress: bool = False,
        total: int | None = None,
    ) -> Embeddings:
        """One batch is one Embed call; more are streamed through EmbedStream."""
        batches = list(codec.requests(inputs, codec.parse_model(model or self.model), batch_size))
        if not batches:
            raise ValueError("nothing to embed")
        bar = tqdm(total=total, unit="input", disable=not progress)
        try:
            if len(batches) == 1:
                parts = [
                    codec.embeddings(await self._inference.Embed(batches[0], timeout=self.timeout))
                ]
            else:
                parts = []
                call = self._inference.EmbedStream(_aiter(batches))
                async for response in call:
                    parts.append(codec.embeddings(response))
                    bar.update(parts[-1].vectors.shape[0])
            return codec.join(parts)
        except grpc.RpcError as e:
            raise LensClientError.from_rpc(e) from None
        finally:
            bar.close()

    async def models(self) -> list[dict[str, Any]]:
        response = await _unary(
            self._models.ListModels(models_pb2.ListModelsRequest(), timeout=self.timeout)
        )
        return [codec.model_dict(m) for m in response.models]

    async def get_model(self, name: str) -> dict[str, Any]:
        request = models_pb2.GetModelRequest(name=name)
        return codec.model_dict(await _unary(self._models.GetModel(request, timeout=self.timeout)))

    async def deploy(self, name: str, version: int = 0, *, keep_collections: bool = False) -> dict:
        """As `LensClient.deploy`: serve `version` (0: the newest) with no failed request."""
        request = models_pb2.DeployRequest(
            name=name, version=version, keep_collections=keep_collections
        )
        return codec.deploy_dict(await _unary(self._models.Deploy(request, timeout=self.timeout)))

    async def rollback(self, name: str, *, keep_collections: bool = False) -> dict:
        """As `LensClient.rollback`: serve again the version deployed before."""
        request = models_pb2.RollbackRequest(name=name, keep_collections=keep_collections)
        return codec.deploy_dict(await _unary(self._models.Rollback(request, timeout=self.timeout)))

    async def load_model(self, model: str) -> dict[str, Any]:
        """As `LensClient.load_model`: load `NAME[:VERSION]` beside the loaded versions."""
        request = codec.version_request(model)
        return codec.model_dict(await _unary(self._models.LoadModel(request, timeout=self.timeout)))

    async def unload_model(self, model: str) -> dict[str, Any]:
        """As `LensClient.unload_model`: unload `NAME:VERSION` (or every version of NAME)."""
        request = codec.version_request(model)
        response = await _unary(self._models.UnloadModel(request, timeout=self.timeout))
        return codec.model_dict(response)

    async def reload_models(self) -> list[dict[str, Any]]:
        """As `LensClient.reload_models`: have the server read its repository now."""
        request = models_pb2.ReloadRepositoryRequest()
        response = await _unary(self._models.ReloadRepository(request, timeout=self.timeout))
        return [codec.model_dict(m) for m in response.models]

    async def healthy(self, service: str = "") -> bool:
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=min(self.timeout, 10)
            )
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncLensClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _unary(call: Awaitable[T]) -> T:
    """The response of a unary call; its gRPC error as a LensClientError."""
    try:
        return await call
    except grpc.RpcError as e:
        raise LensClientError.from_rpc(e) from None


async def _aiter(
    batches: list[inference_pb2.EmbedRequest],
) -> AsyncIterator[inference_pb2.EmbedRequest]:
    for batch in batches:
        yield batch
