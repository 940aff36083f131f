"""What the server serves, and changing it: load, unload, deploy, roll back, reload."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from lens_server.deploy import Deployments, DeployResult
from lens_server.metrics import Metrics
from lens_server.registry import Registry, VersionStatus


@dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: list[VersionStatus]
    serving_version: int
    is_default: bool
    previous_version: int
    memory_bytes: int
    memory_budget_bytes: int
    # Of the serving version, else of the newest readable one ('' / 0 / () if none is).
    kind: str
    dim: int
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class Facts:
    """What a version's manifest says of it, as both front doors report it."""

    source: str = ""  # "type:arch"
    created: int = 0  # Unix time the version was written
    image_size: int = 0
    context_length: int = 0
    image_parity: float = 0.0
    text_parity: float = 0.0


def facts(status: VersionStatus) -> Facts:
    manifest = status.manifest
    if manifest is None:
        return Facts()
    source = manifest.source
    try:
        created = int(datetime.fromisoformat(manifest.created).timestamp())
    except ValueError:
        created = 0
    return Facts(
        source=":".join(str(source[k]) for k in ("type", "arch") if source.get(k)),
        created=created,
        image_size=manifest.image.size if manifest.image else 0,
        context_length=manifest.text.context_length if manifest.text else 0,
        image_parity=manifest.parity.get("image", {}).get("min_cosine", 0.0),
        text_parity=manifest.parity.get("text", {}).get("min_cosine", 0.0),
    )


@dataclass(frozen=True)
class Deployed:
    model: ModelInfo
    result: DeployResult


class Models:
    def __init__(
        self, registry: Registry, deployments: Deployments, metrics: Metrics | None = None
    ) -> None:
        self.registry = registry
        self.deployments = deployments
        self.metrics = metrics

    @property
    def default_model(self) -> str:
        return self.registry.default_model or ""

    def all(self) -> list[ModelInfo]:
        return [self.get(name) for name in self.registry.repo.models()]

    def get(self, name: str) -> ModelInfo:
        statuses = self.registry.statuses(name)  # NotFound lists the models
        serving = self.registry.serving_version(name)
        described = [s for s in statuses if s.manifest and (s.version == serving or not serving)]
        manifest = described[-1].manifest if described else None
        return ModelInfo(
            name=name,
            versions=statuses,
            serving_version=serving,
            is_default=name == self.registry.default_model,
            previous_version=self.registry.previous_version(name),
            memory_bytes=self.registry.memory_bytes(name),
            memory_budget_bytes=self.registry.config.memory_budget_bytes,
            kind=manifest.kind if manifest else "",
            dim=manifest.dim if manifest else 0,
            modalities=manifest.modalities if manifest else (),
        )

    async def load(self, name: str, version: int = 0) -> ModelInfo:
        await self.deployments.load(name, version)
        return self.get(name)

    async def unload(self, name: str, version: int = 0) -> ModelInfo:
        await self.deployments.unload(name, version)
        return self.get(name)

    async def deploy(self, name: str, version: int = 0, keep_collections: bool = False) -> Deployed:
        with self._counted(name, "deploy"):
            result = await self.deployments.deploy(name, version, keep_collections)
        return Deployed(self.get(result.name), result)

    async def rollback(self, name: str, keep_collections: bool = False) -> Deployed:
        with self._counted(name, "rollback"):
            result = await self.deployments.rollback(name, keep_collections)
        return Deployed(self.get(result.name), result)

    @contextmanager
    def _counted(self, name: str, action: str) -> Iterator[None]:
        """Counts a deploy or rollback by outcome: succeeded, unchanged (the version served
        already), or the error's status name."""
        before = self.registry.serving_version(name)
        try:
            yield
        except Exception as e:
            if self.metrics:  # a name no model has is not made a label
                known = name in self.registry.repo.models()
                self.metrics.deployed(name if known else "", action, e)
            raise
        if self.metrics:
            changed = self.registry.serving_version(name) != before
            self.metrics.deployed(name, action, "succeeded" if changed else "unchanged")

    async def reload(self) -> list[ModelInfo]:
        await self.registry.reload()
        return self.all()
