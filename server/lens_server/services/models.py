"""The `lens.v1.Models` service: proto ↔ core, nothing else."""

from __future__ import annotations

import grpc
from lens.v1 import common_pb2, models_pb2, models_pb2_grpc

from lens_server.core.models import Deployed, ModelInfo, Models, facts
from lens_server.registry import State, VersionStatus
from lens_server.services.status import unary

_STATES = {
    State.AVAILABLE: models_pb2.VersionInfo.STATE_AVAILABLE,
    State.LOADING: models_pb2.VersionInfo.STATE_LOADING,
    State.READY: models_pb2.VersionInfo.STATE_READY,
    State.SERVING: models_pb2.VersionInfo.STATE_SERVING,
    State.FAILED: models_pb2.VersionInfo.STATE_FAILED,
}
_MODALITIES = {"image": common_pb2.MODALITY_IMAGE, "text": common_pb2.MODALITY_TEXT}


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, models: Models) -> None:
        self.models = models

    @unary
    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        return self._list(self.models.all())

    @unary
    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelInfo:
        return _model(self.models.get(request.name))

    @unary
    async def LoadModel(
        self, request: models_pb2.ModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelInfo:
        return _model(await self.models.load(request.name, request.version))

    @unary
    async def UnloadModel(
        self, request: models_pb2.ModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelInfo:
        return _model(await self.models.unload(request.name, request.version))

    @unary
    async def Deploy(
        self, request: models_pb2.DeployRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.DeployResponse:
        return _deployed(
            await self.models.deploy(request.name, request.version, request.keep_collections)
        )

    @unary
    async def Rollback(
        self, request: models_pb2.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.DeployResponse:
        return _deployed(await self.models.rollback(request.name, request.keep_collections))

    @unary
    async def ReloadRepository(
        self, request: models_pb2.ReloadRepositoryRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        return self._list(await self.models.reload())

    def _list(self, found: list[ModelInfo]) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(
            models=[_model(m) for m in found], default_model=self.models.default_model
        )


def _deployed(deployed: Deployed) -> models_pb2.DeployResponse:
    result = deployed.result
    return models_pb2.DeployResponse(
        model=_model(deployed.model),
        previous_version=result.previous,
        version=result.version,
        reindexing=list(result.reindexing),
        load_seconds=result.load_s,
        swap_seconds=result.swap_s,
    )


def _model(model: ModelInfo) -> models_pb2.ModelInfo:
    return models_pb2.ModelInfo(
        name=model.name,
        versions=[_version(s) for s in model.versions],
        serving_version=model.serving_version,
        is_default=model.is_default,
        previous_version=model.previous_version,
        memory_bytes=model.memory_bytes,
        memory_budget_bytes=model.memory_budget_bytes,
        kind=model.kind,
        dim=model.dim,
        modalities=[_MODALITIES[m] for m in model.modalities],
    )


def _version(status: VersionStatus) -> models_pb2.VersionInfo:
    info = models_pb2.VersionInfo(
        version=status.version,
        state=_STATES[status.state],
        reason=status.reason,
        providers=list(status.providers),
        memory_bytes=status.memory_bytes,
        in_flight=status.in_flight,
        runtimes=[
            models_pb2.TowerRuntime(
                modality=_MODALITIES[modality],
                runtime=choice.runtime,
                trials=[
                    models_pb2.RuntimeTrial(
                        runtime=t.runtime,
                        providers=list(t.providers),
                        items_per_second=t.items_per_second,
                        min_cosine=t.min_cosine,
                        error=t.error,
                    )
                    for t in choice.trials
                ],
            )
            for modality, choice in status.runtimes.items()
        ],
    )
    known = facts(status)
    info.source = known.source
    info.image_size = known.image_size
    info.context_length = known.context_length
    info.image_parity = known.image_parity
    info.text_parity = known.text_parity
    return info
