"""The synchronous client.

with LensClient("127.0.0.1:50051") as lens:
    vectors = lens.embed_images(["cat.jpg", "dog.png"])   # (2, dim) float32
    vectors = lens.embed_texts(["a cat", "a dog"])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from lens_client.calls import Calls
from lens_client.codec import Call, Embeddings, Responses

__all__ = ["Embeddings", "LensClient"]

T = TypeVar("T")


class LensClient(Calls):
    """A connection to a lens server; every call blocks until its answer.

    `timeout` is the deadline of each call in seconds; `retries` is how many times a call that
    failed with UNAVAILABLE is retried, with exponential backoff (gRPC's retry policy).
    `model` is `NAME[:VERSION]`, the default for every call; None: the server's default.
    `api_key` is sent with every call (None: LENS_API_KEY, if set). `tls_ca` (None:
    LENS_TLS_CA, if set), `tls`, `tls_cert` and `tls_key` connect over TLS (see `Calls`).
    """

    def _connect(
        self,
        address: str,
        options: list[tuple[str, Any]],
        credentials: grpc.ChannelCredentials | None,
    ) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(address, options)
        return grpc.secure_channel(address, credentials, options)

    def _run(self, make: Callable[[], Call[T]]) -> T:
        with Responses(make()) as responses:
            call = responses.call
            answer = call.method(call.request, timeout=call.timeout, metadata=self._metadata)
            for response in answer if call.stream else [answer]:
                responses.add(response)
        return responses.result()

    def healthy(self, service: str = "") -> bool:
        """Whether the server answers SERVING to the standard gRPC health check."""
        try:
            response = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=min(self.timeout, 10)
            )
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LensClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
