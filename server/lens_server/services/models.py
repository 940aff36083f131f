"""The `lens.v1.Models` service: what the server serves, and changing it."""

from __future__ import annotations

import grpc
from lens.v1 import common_pb2, models_pb2, models_pb2_grpc

from lens_server.deploy import Deployments, DeployResult
from lens_server.registry import Registry, State, VersionStatus
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
    def __init__(self, registry: Registry, deployments: Deployments) -> None:
        self.registry = registry
        self.deployments = deployments

    @unary
    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        return self._list()

    @unary
    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelInfo:
        return self._model(request.name)

    @unary
    async def LoadModel(
        self, request: models_pb2.ModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelInfo:
        await self.deployments.load(request.name, request.version)
        return self._model(request.name)

    @unary
    async def UnloadModel(
        self, request: models_pb2.ModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelInfo:
        await self.deployments.unload(request.name, request.version)
        return self._model(request.name)

    @unary
    async def Deploy(
        self, request: models_pb2.DeployRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.DeployResponse:
        result = await self.deployments.deploy(
            request.name, request.version, request.keep_collections
        )
        return self._deployed(result)

    @unary
    async def Rollback(
        self, request: models_pb2.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.DeployResponse:
        result = await self.deployments.rollback(request.name, request.keep_collections)
        return self._deployed(result)

    @unary
    async def ReloadRepository(
        self, request: models_pb2.ReloadRepositoryRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        await self.registry.reload()
        return self._list()

    def _list(self) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(
            models=[self._model(name) for name in self.registry.repo.models()],
            default_model=self.registry.default_model or "",
        )

    def _deployed(self, result: DeployResult) -> models_pb2.DeployResponse:
        return models_pb2.DeployResponse(
            model=self._model(result.name),
            previous_version=result.previous,
            version=result.version,
            reindexing=list(result.reindexing),
            load_seconds=result.load_s,
            swap_seconds=result.swap_s,
        )

    def _model(self, name: str) -> models_pb2.ModelInfo:
        statuses = self.registry.statuses(name)  # NotFound lists the models
        serving = self.registry.serving_version(name)
        info = models_pb2.ModelInfo(
            name=name,
            versions=[_version(s) for s in statuses],
            serving_version=serving,
            is_default=name == self.registry.default_model,
            previous_version=self.registry.previous_version(name),
            memory_bytes=self.registry.memory_bytes(name),
            memory_budget_bytes=self.registry.config.memory_budget_bytes,
        )
        # Kind, dim and towers: those of the serving version, else of the newest readable one.
        described = [s for s in statuses if s.manifest and (s.version == serving or not serving)]
        if described and (manifest := described[-1].manifest):
            info.kind = manifest.kind
            info.dim = manifest.dim
            info.modalities.extend(_MODALITIES[m] for m in manifest.modalities)
        return info


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
    if manifest := status.manifest:
        info.image_size = manifest.image.size if manifest.image else 0
        info.context_length = manifest.text.context_length if manifest.text else 0
        source = manifest.source
        info.source = ":".join(str(source[k]) for k in ("type", "arch") if source.get(k))
        info.image_parity = manifest.parity.get("image", {}).get("min_cosine", 0.0)
        info.text_parity = manifest.parity.get("text", {}).get("min_cosine", 0.0)
    return info
