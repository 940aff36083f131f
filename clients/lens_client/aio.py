"""The asyncio client: the same calls as `LensClient` (one definition, in calls.py,
collections.py and classify.py), awaited.

async with AsyncLensClient() as lens:
    vectors = await lens.embed_texts(["a cat", "a dog"])
    await lens.create_collection("photos")
    await lens.upsert("photos", ids=paths, images=paths)
    hits = await lens.search("photos", text="a cat on a sofa", k=5)
    labels = await lens.classify(paths, labels=["cat", "dog"], top_k=1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from lens_client.calls import Calls
from lens_client.codec import Call, Responses

T = TypeVar("T")


class AsyncLensClient(Calls):
    """An asyncio connection to a lens server; arguments as `LensClient`'s. Image files are
    read on the event loop, as the requests are sent."""

    def _connect(
        self,
        address: str,
        options: list[tuple[str, Any]],
        credentials: grpc.ChannelCredentials | None,
    ) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(address, options)
        return grpc.aio.secure_channel(address, credentials, options)

    async def _run(self, make: Callable[[], Call[T]]) -> T:
        with Responses(make()) as responses:
            call = responses.call
            if call.stream:
                answers = call.method(call.request, timeout=call.timeout, metadata=self._metadata)
                async for response in answers:
                    responses.add(response)
            else:
                answer = call.method(call.request, timeout=call.timeout, metadata=self._metadata)
                responses.add(await answer)
        return responses.result()

    async def healthy(self, service: str = "") -> bool:
        """Whether the server answers SERVING to the standard gRPC health check."""
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = await self._health.Check(request, timeout=min(self.timeout, 10))
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncLensClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
