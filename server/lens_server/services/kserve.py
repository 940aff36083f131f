"""KServe v2's `inference.GRPCInferenceService` (the Open Inference Protocol over gRPC), as
Triton serves it, so that `tritonclient.grpc` and KServe's clients use lens unchanged.

Inputs come as `raw_input_contents` (one entry per input: what tritonclient sends; a BYTES
element is a 4-byte little-endian length, then its bytes) or as `contents.bytes_contents`;
the `embedding` output always goes back in `raw_output_contents` (little-endian float32,
row-major), as Triton answers and as tritonclient reads it. What the tensors mean is
`lens_server.core.kserve`'s; this module only translates protos. Methods of Triton's service
that lens does not declare answer UNIMPLEMENTED.

The generated `inference` package is imported by `lens_server.app` only where KServe is
served: tritonclient.grpc carries its own copy of these messages, and protobuf refuses two
definitions of one name in one process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc

from lens_server.core import Core
from lens_server.core.kserve import (
    BYTES,
    EXTENSIONS,
    FP32,
    OUTPUT,
    Inferred,
    InputTensor,
    KServe,
    TensorSpec,
    check_count,
    check_parameters,
    server_version,
    split_bytes,
)
from lens_server.errors import InvalidInput, LensError
from lens_server.services.status import deadline_of, streaming, unary

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def add_to_server(servicer: KServeServicer, server: grpc.aio.Server) -> str:
    """Registers the service; returns its full name (for reflection and health)."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return SERVICE


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: Core, readiness: Callable[[], str]) -> None:
        self.kserve = KServe(core)
        self.readiness = readiness
        self.limit = core.embedding.config.limits.max_inputs_per_request

    @unary
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @unary
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.readiness())

    @unary
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        ready, _ = self.kserve.model_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @unary
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="lens", version=server_version(), extensions=list(EXTENSIONS)
        )

    @unary
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        found = self.kserve.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=found.name,
            versions=found.versions,
            platform=found.platform,
            inputs=[_tensor(t) for t in found.inputs],
            outputs=[_tensor(t) for t in found.outputs],
        )

    @unary
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self._infer(request, context)

    @streaming
    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Answered in order; a request that fails is answered with its error and the stream
        # goes on, as Triton's does.
        async for request in requests:
            try:
                answer = await self._infer(request, context)
            except LensError as e:
                yield pb.ModelStreamInferResponse(error_message=str(e))
            else:
                yield pb.ModelStreamInferResponse(infer_response=answer)

    @unary
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(name=e.name, version=e.version, state=e.state, reason=e.reason)
                for e in self.kserve.repository_index(request.ready)
            ]
        )

    @unary
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self.kserve.load(request.model_name, request.parameters.keys())
        return pb.RepositoryModelLoadResponse()

    @unary
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self.kserve.unload(request.model_name)  # unload_dependents: lens has none
        return pb.RepositoryModelUnloadResponse()

    async def _infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        for output in request.outputs:
            check_parameters(output.parameters.keys(), f"output {output.name!r}")
        inferred = await self.kserve.infer(
            request.model_name,
            request.model_version,
            _inputs(request, self.limit),
            [o.name for o in request.outputs],
            deadline_of(context),
        )
        return _response(inferred, request.id)


def _inputs(request: pb.ModelInferRequest, limit: int) -> list[InputTensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: give "
            "one per input, in their order"
        )
    tensors = []
    for index, tensor in enumerate(request.inputs):
        name, shape = tensor.name, tuple(tensor.shape)
        where = f"input {name!r}"
        check_parameters(tensor.parameters.keys(), where)
        data: list[bytes | str] = []
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{where}: give contents or raw_input_contents, not both")
            if tensor.datatype == BYTES:  # others are refused by their datatype
                data = list(split_bytes(raw[index], check_count(shape, name, limit), where))
        else:
            data = list(tensor.contents.bytes_contents)
        tensors.append(InputTensor(name, tensor.datatype, shape, data))
    return tensors


def _response(inferred: Inferred, request_id: str) -> pb.ModelInferResponse:
    vectors = inferred.vectors.astype("<f4", copy=False)
    output = pb.ModelInferResponse.InferOutputTensor(
        name=OUTPUT, datatype=FP32, shape=list(vectors.shape)
    )
    return pb.ModelInferResponse(
        model_name=inferred.model,
        model_version=inferred.version,
        id=request_id,
        outputs=[output],
        raw_output_contents=[vectors.tobytes()],
    )


def _tensor(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
    )
