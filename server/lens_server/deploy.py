"""Deploys, rollbacks and re-indexes: what changes when a model's serving version changes.

A deploy loads and warms up the new version beside the serving one, computes the saved
classifiers' weights for it, starts a shadow re-index of every collection pinned to the
outgoing version (refusing the deploy if one cannot be re-embedded), then switches the serving
version in one step. Each collection re-embeds its items with the new version in the
background and swaps its index when complete; until then searches answer from its old vectors
with the old version, which stays loaded for it. A version is unloaded once nothing needs it:
not serving, no collection pinned to it or re-indexing to it, not loaded explicitly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from lens_server.classifiers import ClassifierStore, saved_weights
from lens_server.collections import AnyCollection, Collections
from lens_server.errors import FailedPrecondition, LensError
from lens_server.model import Input, LoadedVersion
from lens_server.registry import Registry
from lens_server.repository import Deployed

log = logging.getLogger(__name__)

# Items re-embedded per step of a re-index.
REINDEX_BATCH = 256


@dataclass(frozen=True)
class DeployResult:
    name: str
    version: int
    previous: int
    reindexing: tuple[str, ...]
    load_s: float
    swap_s: float


class Deployments:
    """Changes what the server serves; every change of one model holds its registry lock."""

    def __init__(
        self, registry: Registry, collections: Collections, classifiers: ClassifierStore
    ) -> None:
        self.registry = registry
        self.collections = collections
        self.classifiers = classifiers
        self._reindexes: dict[str, asyncio.Task[None]] = {}
        self.errors: dict[str, str] = {}  # collection → the last error its re-index met
        self._kept: set[tuple[str, int]] = set()  # loaded explicitly (LoadModel)

    # -- start-up ----------------------------------------------------------------------------

    def pinned(self) -> dict[str, set[int]]:
        """model → the versions collections are pinned to or re-indexing to."""
        pins: dict[str, set[int]] = {}
        for collection in self._collections():
            pins.setdefault(collection.spec.model, set()).update(_versions(collection))
        return pins

    def resume(self) -> None:
        """Restarts the re-indexes a previous run left unfinished."""
        for collection in self._collections():
            if (target := collection.reindex_target) is not None:
                self._start(collection, target.version)

    # -- deploy and rollback -----------------------------------------------------------------

    async def deploy(self, name: str, version: int, keep_collections: bool) -> DeployResult:
        async with self.registry.lock(name):
            version = version or self.registry.repo.latest(name)
            self.registry.repo.path(name, version)  # NotFound lists the models or versions
            state = self.registry.deployed(name, version)
            return await self._switch(name, state, keep_collections)

    async def rollback(self, name: str, keep_collections: bool) -> DeployResult:
        async with self.registry.lock(name):
            return await self._switch(name, self.registry.rolled_back(name), keep_collections)

    async def _switch(self, name: str, state: Deployed, keep_collections: bool) -> DeployResult:
        """Serves `state.serving` and records `state` (a deploy's or a rollback's)."""
        version = state.serving
        previous = self.registry.serving_version(name)
        if previous == version:
            return DeployResult(name, version, previous, (), 0.0, 0.0)
        self._check_kind(name, version, previous)
        started = time.perf_counter()
        loaded_already = version in self.registry.loaded_versions(name)
        new = await self.registry.load(name, version)
        loaded = time.perf_counter()
        try:
            for spec in self.classifiers.of_model(name):  # weights ready for the first request
                if spec.kind == "linear" and not spec.kept_examples:
                    continue  # nothing to re-fit from: it serves the versions it has weights for
                await saved_weights(self.classifiers, spec, new)  # linear ones are re-fitted
            reindexing = await self._retarget(new, previous, keep_collections)
        except Exception:
            self.retire(name)  # the version loaded for nothing leaves again
            raise
        swapping = time.perf_counter()
        self.registry.swap(name, state)
        swapped = time.perf_counter()
        log.info(
            "model %s: version %d serving (was %s)%s",
            name,
            version,
            previous or "none",
            f"; re-indexing {', '.join(reindexing)}" if reindexing else "",
        )
        self.retire(name)
        return DeployResult(
            name,
            version,
            previous,
            tuple(reindexing),
            0.0 if loaded_already else loaded - started,
            swapped - swapping,
        )

    def _check_kind(self, name: str, version: int, previous: int) -> None:
        if not previous:
            return
        old = self.registry.repo.manifest(name, previous)
        new = self.registry.repo.manifest(name, version)
        if new.kind != old.kind or set(new.modalities) != set(old.modalities):
            raise FailedPrecondition(
                f"model {name!r} version {version} is a {new.kind} model embedding "
                f"{'+'.join(new.modalities)}, but version {previous} serving now is a {old.kind} "
                f"model embedding {'+'.join(old.modalities)}: export it under another name"
            )

    async def _retarget(
        self, new: LoadedVersion, previous: int, keep_collections: bool
    ) -> list[str]:
        """Points the model's collections at version `new`: those on it stop re-indexing;
        unless `keep_collections`, those on `previous` (or re-indexing) start re-indexing to
        it. All or nothing: if one cannot be re-indexed, none is changed."""
        name, version, dim = new.name, new.version, new.manifest.dim
        ours = [c for c in self._collections() if c.spec.model == name]
        at_target = [c for c in ours if c.spec.version == version]
        moving = (
            []
            if keep_collections
            else [
                c
                for c in ours
                if c.spec.version != version and (c.spec.version == previous or c.reindex_target)
            ]
        )
        for collection in moving:  # no re-index to an older target may write any more
            await self._halt(collection)
        begun: list[AnyCollection] = []
        try:
            for collection in moving:
                await asyncio.to_thread(collection.begin_reindex, name, version, dim)
                begun.append(collection)
        except LensError as e:
            for collection in begun:
                await asyncio.to_thread(collection.cancel_reindex)
            for collection in moving:
                if (target := collection.reindex_target) is not None:  # carry on as before
                    self._start(collection, target.version)
            raise FailedPrecondition(
                f"{e}; deploy with keep_collections (--keep-collections) to leave the "
                f"collections on version {previous}"
            ) from None
        for collection in at_target:
            await self._stop(collection)
        for collection in moving:
            self._start(collection, version)
        return [c.spec.name for c in moving]

    # -- explicit loads ----------------------------------------------------------------------

    async def load(self, name: str, version: int) -> LoadedVersion:
        async with self.registry.lock(name):
            version = version or self.registry.repo.latest(name)
            loaded = await self.registry.load(name, version)
            self._kept.add((name, version))
            return loaded

    async def unload(self, name: str, version: int) -> None:
        async with self.registry.lock(name):
            self.registry.repo.versions(name)  # NotFound lists the models
            pins = self.pinned().get(name, set())
            targets = self.registry.loaded_versions(name) if version == 0 else [version]
            for v in targets:
                if v in pins:
                    users = [
                        c.spec.name
                        for c in self._collections()
                        if c.spec.model == name and v in _versions(c)
                    ]
                    raise FailedPrecondition(
                        f"model {name!r} version {v} is needed by collection(s) "
                        f"{', '.join(users)}: drop them or deploy and re-index first"
                    )
            if version and version == self.registry.serving_version(name):
                raise FailedPrecondition(
                    f"model {name!r} version {version} is serving: deploy another version "
                    "first, or unload version 0 to stop serving the model"
                )
            for v in targets:
                self._kept.discard((name, v))
            if version:
                self.registry.unload(name, version)
            else:
                self.registry.stop(name)

    def retire(self, name: str) -> None:
        """Unloads the model's versions that nothing needs any more."""
        needed = self.pinned().get(name, set()) | {self.registry.serving_version(name)}
        for version in self.registry.loaded_versions(name):
            if version not in needed and (name, version) not in self._kept:
                self.registry.unload(name, version)

    # -- re-indexing -------------------------------------------------------------------------

    async def reindex(self, collection: AnyCollection, version: int) -> None:
        """Re-embeds a collection with `version` of its model (0: the serving version)."""
        name = collection.spec.model
        if not name:
            raise FailedPrecondition(
                f"collection {collection.spec.name} holds vectors only: it has no model to "
                "re-embed with"
            )
        async with self.registry.lock(name):
            version = version or self.registry.serving_version(name)
            model = self.registry.resolve(name, version)  # loaded, or FailedPrecondition
            if collection.spec.version == version:
                await self._stop(collection)
                return
            await self._halt(collection)
            await asyncio.to_thread(collection.begin_reindex, name, version, model.manifest.dim)
            self._start(collection, version)

    async def forget(self, collection: AnyCollection) -> None:
        """Stops what runs for a collection about to be dropped."""
        await self._halt(collection)
        self.errors.pop(collection.spec.name, None)

    def _start(self, collection: AnyCollection, version: int) -> None:
        name = collection.spec.name
        assert name not in self._reindexes, "halt the running re-index first"
        self.errors.pop(name, None)
        task = asyncio.get_running_loop().create_task(self._drive(collection, version))
        self._reindexes[name] = task

    async def _halt(self, collection: AnyCollection) -> None:
        """Stops the collection's re-index task, keeping what it did."""
        running = self._reindexes.pop(collection.spec.name, None)
        if running:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    async def _stop(self, collection: AnyCollection) -> None:
        """Stops the collection's re-index and drops its shadow."""
        await self._halt(collection)
        await asyncio.to_thread(collection.cancel_reindex)

    async def _drive(self, collection: AnyCollection, version: int) -> None:
        """Re-embeds until the collection swaps; errors are recorded and retried."""
        name, model = collection.spec.name, collection.spec.model
        backoff = 0.5
        while True:
            try:
                with self.registry.lease(model, version) as loaded:
                    if await self._reindex_pass(collection, loaded):
                        break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.errors[name] = str(e)
                log.warning("collection %s: re-index to version %d: %s", name, version, e)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 30.0)
        self.errors.pop(name, None)
        if self._reindexes.get(name) is asyncio.current_task():
            del self._reindexes[name]
        log.info("collection %s re-indexed with %s version %d", name, model, version)
        self.retire(model)

    async def _reindex_pass(self, collection: AnyCollection, model: LoadedVersion) -> bool:
        while True:
            batch = await asyncio.to_thread(collection.pending_sources, REINDEX_BATCH)
            if not batch:
                if await asyncio.to_thread(collection.finish_reindex):
                    return True
                await asyncio.sleep(0.05)  # rows arrived meanwhile, or a rebuild is running
                continue
            inputs: list[Input] = []
            for _, kind, source in batch:
                data = source or b""
                inputs.append(data if kind == "image" else data.decode())
            vectors = await model.embed(inputs, background=True)
            rows = np.array([row for row, _, _ in batch], dtype=np.int64)
            await asyncio.to_thread(collection.put_reindexed, rows, vectors)

    async def close(self) -> None:
        for task in self._reindexes.values():
            task.cancel()
        await asyncio.gather(*self._reindexes.values(), return_exceptions=True)
        self._reindexes.clear()

    def _collections(self) -> list[AnyCollection]:
        found = []
        for name in self.collections.names():
            try:
                found.append(self.collections.get(name))
            except LensError:  # dropped meanwhile
                continue
        return [c for c in found if c.spec.model]


def _versions(collection: AnyCollection) -> set[int]:
    """The versions of its model a collection needs: the one it is pinned to, and the one it
    is re-indexing to."""
    target = collection.reindex_target
    return {collection.spec.version} | ({target.version} if target else set())
