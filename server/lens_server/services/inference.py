"""The `lens.v1.Inference` service: Embed and EmbedStream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import ExitStack

import grpc
import numpy as np
from lens.v1 import common_pb2, inference_pb2, inference_pb2_grpc

from lens_server.config import ServerConfig
from lens_server.core import Core
from lens_server.errors import InvalidInput
from lens_server.model import Input, LoadedVersion
from lens_server.services.classify import classify
from lens_server.services.status import deadline_of, streaming, unary
from lens_server.vectors import check_encoding, quantize


def to_matrix(x: np.ndarray) -> common_pb2.Matrix:
    """(rows, cols) float32 → `lens.v1.Matrix` (little-endian, row-major)."""
    rows, cols = x.shape
    return common_pb2.Matrix(rows=rows, cols=cols, data=x.astype("<f4", copy=False).tobytes())


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, core: Core, config: ServerConfig) -> None:
        self.embedding = core.embedding
        self.classification = core.classification
        self.config = config

    @unary
    async def Classify(
        self, request: inference_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ClassifyResponse:
        return await classify(self.classification, request, context)

    @unary
    async def Embed(
        self, request: inference_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.EmbedResponse:
        return await self._embed(request, context)

    @streaming
    async def EmbedStream(
        self,
        requests: AsyncIterator[inference_pb2.EmbedRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[inference_pb2.EmbedResponse]:
        # Up to `stream_window` requests run at once; responses leave in request order. The
        # whole stream is served by the versions its first requests resolved to (held until
        # it ends), so a deploy in the middle of a job does not split it across versions.
        window = asyncio.Semaphore(self.config.stream_window)
        pending: asyncio.Queue[asyncio.Task[inference_pb2.EmbedResponse] | None] = asyncio.Queue()
        held = ExitStack()
        pinned: dict[tuple[str, int], LoadedVersion] = {}

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    ref = (request.model.name, request.model.version)
                    if ref not in pinned:
                        pinned[ref] = held.enter_context(self.embedding.hold(*ref))
                    task = asyncio.create_task(self._embed(request, context, pinned[ref]))
                    await pending.put(task)
            finally:
                pending.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await pending.get()) is not None:
                response = await task
                window.release()
                yield response
            await reader  # re-raises what ended the request stream
        finally:
            reader.cancel()
            while not pending.empty():
                if (task := pending.get_nowait()) is not None:
                    task.cancel()
            held.close()

    async def _embed(
        self,
        request: inference_pb2.EmbedRequest,
        context: grpc.aio.ServicerContext,
        pinned: LoadedVersion | None = None,
    ) -> inference_pb2.EmbedResponse:
        ref = request.model
        encoding = check_encoding(request.encoding or "float32")
        embedded = await self.embedding.embed(
            _inputs(request), ref.name, ref.version, deadline_of(context), pinned
        )
        if encoding == "float32":
            return inference_pb2.EmbedResponse(
                model=embedded.model,
                version=embedded.version,
                embeddings=to_matrix(embedded.vectors),
            )
        given = np.asarray(request.ranges, np.float32) if request.ranges else None
        codes, ranges = quantize(embedded.vectors, encoding, given)
        return inference_pb2.EmbedResponse(
            model=embedded.model,
            version=embedded.version,
            codes=inference_pb2.Codes(
                encoding=encoding,
                rows=codes.shape[0],
                cols=codes.shape[1],
                data=codes.tobytes(),
                ranges=[] if ranges is None else ranges.reshape(-1).tolist(),
            ),
        )


def _inputs(request: inference_pb2.EmbedRequest) -> list[Input]:
    inputs: list[Input] = []
    for index, item in enumerate(request.inputs):
        kind = item.WhichOneof("kind")
        if kind is None:
            raise InvalidInput(f"input {index}: has neither image nor text")
        inputs.append(item.image if kind == "image" else item.text)
    return inputs
