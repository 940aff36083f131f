"""The models: `GET /v1/models` in OpenAI's list shape (each entry also says what lens knows
of the model), and loading, unloading, deploying, rolling back, reloading the repository."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from lens_server.core import Core, ModelInfo
from lens_server.core.models import Deployed, facts
from lens_server.http.errors import RESPONSES
from lens_server.http.state import core_of
from lens_server.registry import VersionStatus

router = APIRouter(tags=["Models"], responses=RESPONSES)
CoreDep = Annotated[Core, Depends(core_of)]


class TrialOut(BaseModel):
    runtime: str
    providers: list[str]
    items_per_second: float
    min_cosine: float
    error: str


class RuntimeOut(BaseModel):
    modality: str
    runtime: str
    trials: list[TrialOut]


class VersionOut(BaseModel):
    version: int
    state: str
    reason: str
    providers: list[str]
    memory_bytes: int
    in_flight: int
    runtimes: list[RuntimeOut]
    source: str = ""
    image_size: int = 0
    context_length: int = 0
    image_parity: float = 0.0
    text_parity: float = 0.0


class ModelOut(BaseModel):
    """OpenAI's model object (`id`, `object`, `created`, `owned_by`), then lens's fields."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "lens"
    versions: list[VersionOut]
    serving_version: int
    is_default: bool
    previous_version: int
    memory_bytes: int
    memory_budget_bytes: int
    kind: str
    dim: int
    modalities: list[str]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
    default_model: str


class VersionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=0, ge=0, description="0: the newest version.")


class DeployBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=0, ge=0, description="0: the newest version.")
    keep_collections: bool = Field(
        default=False, description="Leave the model's collections on the version they hold."
    )


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_collections: bool = False


class DeployOut(BaseModel):
    model: ModelOut
    previous_version: int
    version: int
    reindexing: list[str]
    load_seconds: float
    swap_seconds: float


@router.get("/v1/models", response_model=ModelList)
async def list_models(core: CoreDep) -> ModelList:
    return ModelList(
        data=[_model(m) for m in core.models.all()], default_model=core.models.default_model
    )


@router.get("/v1/models/{name}", response_model=ModelOut)
async def get_model(name: str, core: CoreDep) -> ModelOut:
    return _model(core.models.get(name))


@router.post("/v1/models/{name}/load", response_model=ModelOut)
async def load_model(name: str, core: CoreDep, body: VersionBody | None = None) -> ModelOut:
    """Loads a version beside the others (it serves if the model has no serving version)."""
    return _model(await core.models.load(name, (body or VersionBody()).version))


@router.post("/v1/models/{name}/unload", response_model=ModelOut)
async def unload_model(name: str, core: CoreDep, body: VersionBody | None = None) -> ModelOut:
    """Unloads a version (0: all of the model's) once its requests finish."""
    return _model(await core.models.unload(name, (body or VersionBody()).version))


@router.post("/v1/models/{name}/deploy", response_model=DeployOut)
async def deploy(name: str, core: CoreDep, body: DeployBody | None = None) -> DeployOut:
    """Serves another version with no failed request; the model's collections follow."""
    body = body or DeployBody()
    return _deployed(await core.models.deploy(name, body.version, body.keep_collections))


@router.post("/v1/models/{name}/rollback", response_model=DeployOut)
async def rollback(name: str, core: CoreDep, body: RollbackBody | None = None) -> DeployOut:
    """Serves again the version that served before the current one."""
    body = body or RollbackBody()
    return _deployed(await core.models.rollback(name, body.keep_collections))


@router.post("/v1/repository/reload", response_model=ModelList)
async def reload(core: CoreDep) -> ModelList:
    """Reads the repository again: new models and versions, changed files."""
    found = await core.models.reload()
    return ModelList(data=[_model(m) for m in found], default_model=core.models.default_model)


def _deployed(deployed: Deployed) -> DeployOut:
    result = deployed.result
    return DeployOut(
        model=_model(deployed.model),
        previous_version=result.previous,
        version=result.version,
        reindexing=list(result.reindexing),
        load_seconds=result.load_s,
        swap_seconds=result.swap_s,
    )


def _model(model: ModelInfo) -> ModelOut:
    serving = [facts(s) for s in model.versions if s.version == model.serving_version]
    return ModelOut(
        id=model.name,
        created=serving[0].created if serving else 0,
        versions=[_version(s) for s in model.versions],
        serving_version=model.serving_version,
        is_default=model.is_default,
        previous_version=model.previous_version,
        memory_bytes=model.memory_bytes,
        memory_budget_bytes=model.memory_budget_bytes,
        kind=model.kind,
        dim=model.dim,
        modalities=list(model.modalities),
    )


def _version(status: VersionStatus) -> VersionOut:
    known = facts(status)
    return VersionOut(
        version=status.version,
        state=str(status.state),
        reason=status.reason,
        providers=list(status.providers),
        memory_bytes=status.memory_bytes,
        in_flight=status.in_flight,
        runtimes=[
            RuntimeOut(
                modality=modality,
                runtime=choice.runtime,
                trials=[
                    TrialOut(
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
        source=known.source,
        image_size=known.image_size,
        context_length=known.context_length,
        image_parity=known.image_parity,
        text_parity=known.text_parity,
    )
