"""Which model versions are loaded, which one serves each model, and the default model."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum

from server.config import ServerConfig
from server.errors import FailedPrecondition, InvalidInput, LensError, NotFound, available
from server.model import LoadedVersion, open_towers
from server.repository import Manifest, Repository

log = logging.getLogger(__name__)


class State(StrEnum):
    AVAILABLE = "available"
    LOADING = "loading"
    READY = "ready"
    SERVING = "serving"
    FAILED = "failed"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    reason: str = ""
    manifest: Manifest | None = None
    providers: tuple[str, ...] = ()


class Registry:
    """The server's view of the repository: loads versions and resolves model references.

    At start-up the newest version of every model is loaded and serves its model; a version
    that fails to load is reported FAILED with its reason and the server serves the others.
    """

    def __init__(self, repo: Repository, config: ServerConfig, decode_pool: Executor) -> None:
        self.repo = repo
        self.config = config
        self._decode_pool = decode_pool
        self._loaded: dict[tuple[str, int], LoadedVersion] = {}
        self._serving: dict[str, int] = {}
        self._failed: dict[tuple[str, int], str] = {}
        self._loading: set[tuple[str, int]] = set()
        self.default_model: str | None = None

    async def start(self) -> None:
        models = self.repo.models()
        wanted = self.config.default_model
        if wanted and wanted not in models:
            raise NotFound(
                f"default model {wanted!r} is not in {self.repo.root}. "
                f"{available('models', models)}"
            )
        self.default_model = wanted or (models[0] if len(models) == 1 else None)
        for name in models:  # one at a time: loading several large models at once spikes memory
            await self.load(name, self.repo.latest(name))

    async def load(self, name: str, version: int) -> None:
        """Loads and warms up a version, then makes it the model's serving version."""
        key = (name, version)
        self._loading.add(key)
        self._failed.pop(key, None)
        try:
            manifest = self.repo.manifest(name, version)
            folder = self.repo.path(name, version)
            towers = await asyncio.to_thread(open_towers, manifest, folder, self.config)
            loaded = LoadedVersion(manifest, folder, self.config, self._decode_pool, towers)
            await loaded.warm_up()
        except LensError as e:
            self._failed[key] = str(e)
            log.error("model %s version %d failed to load: %s", name, version, e)
            return
        finally:
            self._loading.discard(key)
        self._loaded[key] = loaded
        self._serving[name] = version
        log.info("model %s version %d serving on %s", name, version, ", ".join(loaded.providers))

    def resolve(self, name: str, version: int = 0) -> LoadedVersion:
        """The loaded version a request names ("" = the default model, 0 = serving version)."""
        if not name:
            if self.default_model is None:
                raise InvalidInput(
                    "no model named and the server has no default model. "
                    f"{available('models', self.repo.models())}"
                )
            name = self.default_model
        versions = self.repo.versions(name)  # NotFound lists the models
        if version == 0:
            if name not in self._serving:
                reasons = "; ".join(
                    f"version {v}: {r}" for (n, v), r in self._failed.items() if n == name
                )
                raise FailedPrecondition(
                    f"model {name!r} has no version serving" + (f" ({reasons})" if reasons else "")
                )
            version = self._serving[name]
        loaded = self._loaded.get((name, version))
        if loaded is None:
            if version not in versions:
                raise NotFound(
                    f"model {name!r} has no version {version}. {available('versions', versions)}"
                )
            status = self.status(name, version)
            why = f": {status.reason}" if status.reason else ""
            raise FailedPrecondition(
                f"model {name!r} version {version} is not loaded (state {status.state}{why}). "
                f"{available('loaded versions', self.loaded_versions(name))}"
            )
        return loaded

    def loaded_versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self._loaded if n == name)

    def serving_version(self, name: str) -> int:
        return self._serving.get(name, 0)

    def status(self, name: str, version: int) -> VersionStatus:
        key = (name, version)
        loaded = self._loaded.get(key)
        if loaded is not None:
            state = State.SERVING if self._serving.get(name) == version else State.READY
            return VersionStatus(version, state, "", loaded.manifest, tuple(loaded.providers))
        try:
            manifest: Manifest | None = self.repo.manifest(name, version)
        except LensError as e:
            return VersionStatus(version, State.FAILED, str(e))
        if key in self._failed:
            return VersionStatus(version, State.FAILED, self._failed[key], manifest)
        state = State.LOADING if key in self._loading else State.AVAILABLE
        return VersionStatus(version, state, "", manifest)

    def statuses(self, name: str) -> list[VersionStatus]:
        return [self.status(name, v) for v in self.repo.versions(name)]

    async def close(self) -> None:
        await asyncio.gather(*(v.close() for v in self._loaded.values()))
        self._loaded.clear()
        self._serving.clear()
