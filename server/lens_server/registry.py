"""Which model versions are loaded, which one serves each model, and the default model.

The registry owns the mechanism of every change to what is served; `server.deploy` decides
when to use it. Loading happens beside the versions already loaded; switching the serving
version is one assignment on the event loop, so a request sees either the old version or the
new one, never a mix; a version leaves only once the requests holding it have finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

from lens_server.config import ServerConfig
from lens_server.errors import (
    FailedPrecondition,
    InvalidInput,
    LensError,
    ModelError,
    NotFound,
    Overloaded,
    available,
)
from lens_server.metrics import Metrics
from lens_server.model import LoadedVersion, open_towers, weight_bytes
from lens_server.repository import Deployed, Manifest, Repository
from lens_server.runtime.choose import Choice

log = logging.getLogger(__name__)

Key = tuple[str, int]


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
    memory_bytes: int = 0
    in_flight: int = 0
    # For a loaded version: the runtime each tower runs on, and what the choice measured.
    runtimes: dict[str, Choice] = field(default_factory=dict)


class Registry:
    """The server's view of the repository: loads versions and resolves model references.

    At start-up every model's deployed version (its newest if it was never deployed) is
    loaded and serves; a version that fails to load is reported FAILED with its reason and
    the server serves the others.
    """

    def __init__(
        self,
        repo: Repository,
        config: ServerConfig,
        decode_pool: Executor,
        metrics: Metrics | None = None,
    ) -> None:
        self.repo = repo
        self.config = config
        self._decode_pool = decode_pool
        self._metrics = metrics  # where loaded versions record their towers' work
        self._loaded: dict[Key, LoadedVersion] = {}
        self._serving: dict[str, int] = {}
        self._failed: dict[Key, str] = {}
        # Models whose deployed.json cannot be read: why. Nothing of theirs serves until a
        # deploy writes it again (serving another version than the one deployed could serve
        # one that was rolled back for a reason).
        self._unreadable: dict[str, str] = {}
        self._loading: dict[Key, asyncio.Future[LoadedVersion]] = {}
        self._loading_bytes: dict[Key, int] = {}
        # Unloaded versions still finishing their requests.
        self._retiring: dict[Key, LoadedVersion] = {}
        self._retire_tasks: set[asyncio.Task[None]] = set()
        # Loaded versions whose files changed on disk since: why.
        self._changed: dict[Key, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Models unloaded on request: a repository read does not load them again.
        self._stopped: set[str] = set()
        self.default_model: str | None = None

    async def start(self, pinned: dict[str, set[int]] | None = None) -> None:
        """Loads every model's deployed version, and the versions in `pinned` (those
        collections are pinned to)."""
        models = self.repo.models()
        wanted = self.config.default_model
        if wanted and wanted not in models:
            raise NotFound(
                f"default model {wanted!r} is not in {self.repo.root}. "
                f"{available('models', models)}"
            )
        self.default_model = wanted or (models[0] if len(models) == 1 else None)
        for name, _ in self.config.model_batch:  # kept: the model may be added later
            if name not in models:
                log.warning(
                    "batching is given for model %r, which is not in %s (yet)", name, self.repo.root
                )
        for name in models:  # one at a time: loading several large models at once spikes memory
            await self._load_model(name)
            for version in sorted((pinned or {}).get(name, set())):
                if version in self.repo.versions(name):
                    await self.try_load(name, version)

    async def _load_model(self, name: str) -> None:
        versions = self.repo.versions(name)
        try:
            deployed = self._deployed(name).serving
        except FailedPrecondition as e:
            self._unreadable[name] = f"{e}; `lens deploy {name} VERSION` writes it again"
            log.error("model %s is not served: %s", name, self._unreadable[name])
            return
        await self.try_load(name, deployed if deployed in versions else versions[-1], serve=True)

    # -- loading and unloading ---------------------------------------------------------------

    async def load(self, name: str, version: int, serve: bool = False) -> LoadedVersion:
        """Loads and warms up a version beside the loaded ones (a no-op if it is loaded).

        It serves its model if `serve` is set or the model has no serving version. Raises
        NotFound, Overloaded (over the memory budget) or the reason it failed to load, which
        `status` then reports.
        """
        key = (name, version)
        loaded = self._loaded.get(key)
        if loaded is None:
            pending = self._loading.get(key)
            loaded = await (asyncio.shield(pending) if pending else self._load(key))
        if serve or name not in self._serving:
            self._serving[name] = version
        self._stopped.discard(name)
        return loaded

    async def try_load(self, name: str, version: int, serve: bool = False) -> None:
        """`load`, with a failure logged and reported in `status` instead of raised."""
        with contextlib.suppress(LensError):  # logged and recorded by _load
            await self.load(name, version, serve)

    async def _load(self, key: Key) -> LoadedVersion:
        name, version = key
        future: asyncio.Future[LoadedVersion] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        self._failed.pop(key, None)
        loaded: LoadedVersion | None = None
        try:
            manifest = self.repo.manifest(name, version)  # NotFound lists the versions
            folder = self.repo.path(name, version)
            self._reserve(key, weight_bytes(manifest, folder))
            towers = await asyncio.to_thread(open_towers, manifest, folder, self.config)
            loaded = LoadedVersion(
                manifest, folder, self.config, self._decode_pool, towers, self._metrics
            )
            await loaded.warm_up()
        except Exception as error:
            # A version that cannot run is refused like one that fails its checks.
            e = error
            if isinstance(error, ModelError) or not isinstance(error, LensError):
                e = FailedPrecondition(f"model {name} version {version} cannot be loaded: {error}")
            if loaded is not None:
                await loaded.close()
            if isinstance(e, (NotFound, Overloaded)):  # not the version's fault: not FAILED
                log.warning("model %s version %d not loaded: %s", name, version, e)
            else:
                self._failed[key] = str(e)
                log.error("model %s version %d failed to load: %s", name, version, e)
            future.set_exception(e)
            future.exception()  # retrieved: a failure nobody waits for is not an asyncio error
            if e is error:
                raise
            raise e from error
        finally:
            del self._loading[key]
            self._loading_bytes.pop(key, None)
        self._loaded[key] = loaded
        self._changed.pop(key, None)
        future.set_result(loaded)
        log.info("model %s version %d loaded on %s", name, version, ", ".join(loaded.providers))
        return loaded

    def _reserve(self, key: Key, needed: int) -> None:
        """Counts a loading version's bytes against the budget; Overloaded if over it."""
        budget = self.config.memory_budget_bytes
        if budget:
            held = self.memory_bytes()
            if held + needed > budget:
                holders = ", ".join(
                    f"{n}:{v} {m.memory_bytes:,}"
                    for (n, v), m in sorted({**self._loaded, **self._retiring}.items())
                )
                raise Overloaded(
                    f"loading {key[0]} version {key[1]} needs {needed:,} bytes, and the loaded "
                    f"versions hold {held:,} of the {budget:,}-byte memory budget "
                    f"({holders or 'none'}); unload a version first"
                )
        self._loading_bytes[key] = needed

    def memory_bytes(self, name: str | None = None) -> int:
        """Bytes held by loaded, loading and draining versions (of one model, or all)."""
        held = [(k, m.memory_bytes) for k, m in {**self._loaded, **self._retiring}.items()]
        held += list(self._loading_bytes.items())
        return sum(b for (n, _), b in held if name is None or n == name)

    def stop(self, name: str) -> None:
        """Unloads every version of the model, which stays unloaded until loaded again."""
        self._stopped.add(name)
        for version in self.loaded_versions(name):
            self.unload(name, version)

    def unload(self, name: str, version: int) -> None:
        """Stops the version taking requests now; closes it once those in flight finish.

        Unloading the serving version leaves the model without one.
        """
        key = (name, version)
        loaded = self._loaded.pop(key, None)
        if loaded is None:
            return
        if self._serving.get(name) == version:
            del self._serving[name]
        self._changed.pop(key, None)
        self._retiring[key] = loaded
        task = asyncio.get_running_loop().create_task(self._retire(key, loaded))
        self._retire_tasks.add(task)
        task.add_done_callback(self._retire_tasks.discard)

    async def _retire(self, key: Key, loaded: LoadedVersion) -> None:
        try:
            await loaded.drained()
            await loaded.close()
            log.info("model %s version %d unloaded", *key)
        finally:
            self._retiring.pop(key, None)

    # -- serving -----------------------------------------------------------------------------

    def lock(self, name: str) -> asyncio.Lock:
        """Held by whoever changes the model's serving version: changes never interleave."""
        return self._locks.setdefault(name, asyncio.Lock())

    def swap(self, name: str, state: Deployed) -> int:
        """Makes `state.serving`, a loaded version, the model's serving version at once, and
        records `state` as the deploy state. Returns the version that served before (0 if
        none)."""
        if (name, state.serving) not in self._loaded:
            raise FailedPrecondition(f"model {name!r} version {state.serving} is not loaded")
        previous = self._serving.get(name, 0)
        self._serving[name] = state.serving
        self._record(name, state)
        return previous

    def deployed(self, name: str, version: int) -> Deployed:
        """The deploy state a deploy of `version` of `name` leads to (with a new history if
        the recorded one cannot be read: the deploy repairs it)."""
        try:
            return self._deployed(name).deploy(version)
        except FailedPrecondition as e:
            log.warning("model %s: %s; this deploy starts a new history", name, e)
            return Deployed().deploy(version)

    def rolled_back(self, name: str) -> Deployed:
        """The deploy state a rollback of `name` leads to (FailedPrecondition if none)."""
        state = self._deployed(name)
        if not state.previous:
            raise FailedPrecondition(
                f"model {name!r} has no earlier deployed version to roll back to "
                f"(serving version {state.serving or 'none'})"
            )
        return state.rollback()

    def _deployed(self, name: str) -> Deployed:
        """The recorded deploy state, corrected to what actually serves."""
        state = self.repo.deployed(name)
        serving = self._serving.get(name, 0)
        if serving and state.serving != serving:
            state = Deployed(serving, state.history)
        return state

    def _record(self, name: str, state: Deployed) -> None:
        try:
            self.repo.save_deployed(name, state)
        except OSError as e:  # a read-only repository still serves; the change is not kept
            log.warning("model %s: could not record the deployed version: %s", name, e)
            return
        self._unreadable.pop(name, None)

    def previous_version(self, name: str) -> int:
        """The version a rollback returns to; 0 if none (or the state cannot be read)."""
        try:
            return self._deployed(name).previous
        except FailedPrecondition:
            return 0

    # -- requests ----------------------------------------------------------------------------

    def resolve(self, name: str, version: int = 0) -> LoadedVersion:
        """The loaded version a request names ("" = the default model, 0 = serving version)."""
        if not name:
            if self.default_model is None:
                raise InvalidInput(
                    "no model named and the server has no default model. "
                    f"{available('models', self.repo.models())}"
                )
            name = self.default_model
        if version == 0:
            if name not in self._serving:
                self.repo.versions(name)  # NotFound lists the models
                reasons = "; ".join(
                    [f"version {v}: {r}" for (n, v), r in self._failed.items() if n == name]
                    + ([self._unreadable[name]] if name in self._unreadable else [])
                )
                raise FailedPrecondition(
                    f"model {name!r} has no version serving" + (f" ({reasons})" if reasons else "")
                )
            version = self._serving[name]
        loaded = self._loaded.get((name, version))
        if loaded is None:
            versions = self.repo.versions(name)  # NotFound lists the models
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

    @contextmanager
    def lease(self, name: str, version: int = 0) -> Iterator[LoadedVersion]:
        """The resolved version, kept loaded until the `with` block ends."""
        with self.resolve(name, version).lease() as loaded:
            yield loaded

    # -- what is loaded ----------------------------------------------------------------------

    def loaded_versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self._loaded if n == name)

    def serving_version(self, name: str) -> int:
        return self._serving.get(name, 0)

    def status(self, name: str, version: int) -> VersionStatus:
        key = (name, version)
        loaded = self._loaded.get(key)
        if loaded is not None:
            state = State.SERVING if self._serving.get(name) == version else State.READY
            return VersionStatus(
                version,
                state,
                self._changed.get(key, ""),
                loaded.manifest,
                tuple(loaded.providers),
                loaded.memory_bytes,
                loaded.in_flight,
                loaded.runtimes,
            )
        try:
            manifest: Manifest | None = self.repo.manifest(name, version)
        except LensError as e:
            return VersionStatus(version, State.FAILED, str(e))
        if key in self._failed:
            return VersionStatus(version, State.FAILED, self._failed[key], manifest)
        if name in self._unreadable and version == self.repo.versions(name)[-1]:
            return VersionStatus(version, State.FAILED, self._unreadable[name], manifest)
        state = State.LOADING if key in self._loading else State.AVAILABLE
        return VersionStatus(version, state, "", manifest)

    def statuses(self, name: str) -> list[VersionStatus]:
        return [self.status(name, v) for v in self.repo.versions(name)]

    # -- the repository changing under the server --------------------------------------------

    async def reload(self) -> None:
        """Loads models that appeared in the repository; reports files changed on disk under
        loaded versions (which keep serving: they hold their own copy)."""
        for name in self.repo.models():
            if name in self._serving or name in self._stopped:
                continue
            if name not in self._unreadable and not any(n == name for n, _ in self._failed):
                async with self.lock(name):
                    if name not in self._serving and not self.loaded_versions(name):
                        log.info("model %s appeared in the repository", name)
                        await self._load_model(name)
        if self.default_model is None and self.config.default_model is None:
            models = self.repo.models()
            self.default_model = models[0] if len(models) == 1 else None
        for key, loaded in list(self._loaded.items()):
            reason = await asyncio.to_thread(loaded.changed_files)
            if reason and self._changed.get(key) != reason:
                log.warning("model %s version %d: %s; the loaded copy keeps serving", *key, reason)
            if reason:
                self._changed[key] = reason
            else:
                self._changed.pop(key, None)

    async def watch(self) -> None:
        """Reloads every `config.poll_s` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.config.poll_s)
            try:
                await self.reload()
            except Exception:  # the watcher must outlive a bad scan
                log.exception("reading the repository failed")

    async def close(self) -> None:
        for key in list(self._loaded):
            self.unload(*key)
        await asyncio.gather(*(m.close() for m in self._retiring.values()))
        for task in list(self._retire_tasks):
            task.cancel()
        self._retiring.clear()
