"""The `lens.v1.Models` service: what the server serves."""

from __future__ import annotations

import grpc
from lens.v1 import common_pb2, models_pb2, models_pb2_grpc

from server.registry import Registry, State, VersionStatus
from server.services.status import unary

_STATES = {
    State.AVAILABLE: models_pb2.VersionInfo.STATE_AVAILABLE,
    State.LOADING: models_pb2.VersionInfo.STATE_LOADING,
    State.READY: models_pb2.VersionInfo.STATE_READY,
    State.SERVING: models_pb2.VersionInfo.STATE_SERVING,
    State.FAILED: models_pb2.VersionInfo.STATE_FAILED,
}
_MODALITIES = {"image": common_pb2.MODALITY_IMAGE, "text": common_pb2.MODALITY_TEXT}


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @unary
    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(
            models=[self._model(name) for name in self.registry.repo.models()],
            default_model=self.registry.default_model or "",
        )

    @unary
    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelInfo:
        return self._model(request.name)

    def _model(self, name: str) -> models_pb2.ModelInfo:
        statuses = self.registry.statuses(name)  # NotFound lists the models
        serving = self.registry.serving_version(name)
        info = models_pb2.ModelInfo(
            name=name,
            versions=[_version(s) for s in statuses],
            serving_version=serving,
            is_default=name == self.registry.default_model,
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
    )
    if manifest := status.manifest:
        info.image_size = manifest.image.size if manifest.image else 0
        info.context_length = manifest.text.context_length if manifest.text else 0
        source = manifest.source
        info.source = ":".join(str(source[k]) for k in ("type", "arch") if source.get(k))
        info.image_parity = manifest.parity.get("image", {}).get("min_cosine", 0.0)
        info.text_parity = manifest.parity.get("text", {}).get("min_cosine", 0.0)
    return info
