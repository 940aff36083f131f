"""The registry's states over a real repository (the tiny CLIP, copied into more versions):
AVAILABLE → LOADING → READY or SERVING, FAILED with its reason, unloading, and an unloaded
version that leaves only once the requests holding it have finished.

Driven by the event loop, never by sleeping: `await asyncio.sleep(0)` only lets a task that
was just started run up to its first wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lens_server.config import BatchConfig, RuntimeConfig, ServerConfig
from lens_server.errors import FailedPrecondition, NotFound, Overloaded, Unavailable
from lens_server.registry import Registry, State
from lens_server.repository import Repository

CONFIG = ServerConfig(
    batch=BatchConfig(max_batch_size=4),
    runtime=RuntimeConfig(engine="onnx", providers=("CPUExecutionProvider",), decode_workers=1),
)


@pytest.fixture()
def repo(tiny_repo: Path, tmp_path: Path) -> Repository:
    """A private copy of the repository (tiny version 1): these tests add versions to it."""
    return Repository(Path(shutil.copytree(tiny_repo, tmp_path / "repo")))


def copy_version(repo: Repository, edit: Callable[[dict], object] | None = None) -> int:
    """A new version of tiny copied from version 1, its manifest passed through `edit`."""
    version = repo.versions("tiny")[-1] + 1
    target = repo.root / "tiny" / str(version)
    shutil.copytree(repo.root / "tiny" / "1", target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    if edit:
        edit(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return version


def run(
    repo: Repository,
    body: Callable[[Registry], Awaitable[None]],
    config: ServerConfig = CONFIG,
) -> None:
    """`body(registry)` on a started registry, closed after."""

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            registry = Registry(repo, config, pool)
            await registry.start()
            try:
                await body(registry)
            finally:
                await registry.close()

    asyncio.run(main())


def states(registry: Registry) -> dict[int, State]:
    return {s.version: s.state for s in registry.statuses("tiny")}


async def retired(registry: Registry) -> None:
    """Returns once every unloaded version has been closed."""
    await asyncio.gather(*list(registry._retire_tasks))


def test_start_serves_the_newest_version_and_the_others_are_available(repo):
    async def body(registry: Registry) -> None:
        assert states(registry) == {1: State.SERVING}
        assert registry.default_model == "tiny"
        served = registry.resolve("")  # the default model, its serving version
        assert (served.name, served.version) == ("tiny", 1)
        copy_version(repo)
        assert states(registry) == {1: State.SERVING, 2: State.AVAILABLE}
        status = registry.status("tiny", 2)
        assert status.manifest is not None and status.manifest.version == 2
        with pytest.raises(FailedPrecondition, match="version 2 is not loaded"):
            registry.resolve("tiny", 2)

    run(repo, body)


def test_a_version_loads_beside_the_serving_one_and_serves_once_swapped(repo):
    async def body(registry: Registry) -> None:
        copy_version(repo)
        serving = registry.resolve("tiny")
        loading = asyncio.create_task(registry.load("tiny", 2))
        again = asyncio.create_task(registry.load("tiny", 2))  # joins the same load
        await asyncio.sleep(0)
        assert states(registry) == {1: State.SERVING, 2: State.LOADING}
        assert registry.resolve("tiny") is serving  # requests still go to version 1
        assert registry.memory_bytes("tiny") > serving.memory_bytes  # counted while loading
        loaded = await loading
        assert await again is loaded
        assert states(registry) == {1: State.SERVING, 2: State.READY}
        assert registry.resolve("tiny", 2) is loaded

        assert registry.swap("tiny", registry.deployed("tiny", 2)) == 1
        assert states(registry) == {1: State.READY, 2: State.SERVING}
        assert registry.resolve("tiny") is loaded
        assert repo.deployed("tiny").serving == 2  # recorded
        status = registry.status("tiny", 2)
        assert status.providers == ("CPUExecutionProvider",) and status.memory_bytes > 0
        assert {m: c.runtime for m, c in status.runtimes.items()} == {
            "image": "onnx",
            "text": "onnx",
        }

    run(repo, body)


def test_loading_with_serve_makes_it_the_serving_version(repo):
    async def body(registry: Registry) -> None:
        copy_version(repo)
        await registry.load("tiny", 2, serve=True)
        assert states(registry) == {1: State.READY, 2: State.SERVING}

    run(repo, body)


def test_a_version_that_cannot_load_is_failed_with_its_reason(repo):
    async def body(registry: Registry) -> None:
        bad_parity = copy_version(repo, lambda m: m["parity"]["image"].update(min_cosine=0.5))
        corrupt = copy_version(repo)
        with open(repo.path("tiny", corrupt) / "text.onnx", "r+b") as f:
            f.seek(100)
            f.write(b"\0" * 16)

        with pytest.raises(FailedPrecondition, match="failed parity"):
            await registry.load("tiny", bad_parity)
        await registry.try_load("tiny", corrupt)  # recorded, not raised
        found = {s.version: s for s in registry.statuses("tiny")}
        assert found[bad_parity].state == State.FAILED
        assert "failed parity" in found[bad_parity].reason
        assert found[corrupt].state == State.FAILED and "sha256" in found[corrupt].reason
        assert found[1].state == State.SERVING  # the serving version is untouched
        with pytest.raises(FailedPrecondition, match=r"state failed: .*failed parity"):
            registry.resolve("tiny", bad_parity)

        # Put right, it loads: FAILED is what the last attempt did, not a verdict.
        manifest = json.loads((repo.path("tiny", bad_parity) / "manifest.json").read_text())
        manifest["parity"]["image"]["min_cosine"] = 1.0
        (repo.path("tiny", bad_parity) / "manifest.json").write_text(json.dumps(manifest))
        await registry.load("tiny", bad_parity)
        assert registry.status("tiny", bad_parity).state == State.READY

    run(repo, body)


def test_what_is_not_the_versions_fault_leaves_it_available(repo):
    async def body(registry: Registry) -> None:
        copy_version(repo)
        with pytest.raises(NotFound, match="no version 7"):
            await registry.load("tiny", 7)
        with pytest.raises(Overloaded, match="memory budget"):
            await registry.load("tiny", 2)
        assert states(registry) == {1: State.SERVING, 2: State.AVAILABLE}
        assert registry.status("tiny", 2).reason == ""

    # Room for one version of the tiny model, not for two.
    one = sum((repo.path("tiny", 1) / f).stat().st_size for f in ("image.onnx", "text.onnx"))
    run(repo, body, dataclasses.replace(CONFIG, memory_budget_bytes=one * 3 // 2))


def test_unloading_stops_requests_at_once_and_closes_the_version(repo):
    async def body(registry: Registry) -> None:
        copy_version(repo)
        ready = await registry.load("tiny", 2)
        registry.unload("tiny", 2)
        assert states(registry) == {1: State.SERVING, 2: State.AVAILABLE}
        assert registry.loaded_versions("tiny") == [1]
        await retired(registry)
        with pytest.raises(Unavailable):
            await ready.embed(["a photo"])
        registry.unload("tiny", 2)  # not loaded: nothing to do

        registry.unload("tiny", 1)  # the serving version: the model has none now
        assert registry.serving_version("tiny") == 0
        assert states(registry) == {1: State.AVAILABLE, 2: State.AVAILABLE}
        with pytest.raises(FailedPrecondition, match="has no version serving"):
            registry.resolve("tiny")
        await registry.load("tiny", 1)  # with none serving, a loaded version serves
        assert states(registry) == {1: State.SERVING, 2: State.AVAILABLE}

    run(repo, body)


def test_a_stopped_model_stays_unloaded_when_the_repository_is_read_again(repo):
    async def body(registry: Registry) -> None:
        registry.stop("tiny")
        await registry.reload()
        assert registry.loaded_versions("tiny") == [] and registry.serving_version("tiny") == 0
        await registry.load("tiny", 1)
        assert states(registry) == {1: State.SERVING}

    run(repo, body)


def test_an_unloaded_version_retires_once_its_requests_finish(repo):
    async def body(registry: Registry) -> None:
        with registry.lease("tiny") as held:
            assert registry.status("tiny", 1).in_flight == 1
            registry.unload("tiny", 1)
            assert states(registry) == {1: State.AVAILABLE}
            with pytest.raises(FailedPrecondition):
                registry.resolve("tiny")  # no new request gets it
            for _ in range(5):  # the retirement runs up to its wait for the lease
                await asyncio.sleep(0)
            # Still counted, and the request holding it still embeds with it.
            assert registry.memory_bytes("tiny") == held.memory_bytes > 0
            out = await held.embed(["a photo of a cat"])
            assert out.shape == (1, held.manifest.dim)
            np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
        await retired(registry)
        assert registry.memory_bytes("tiny") == 0 and held.in_flight == 0
        with pytest.raises(Unavailable):
            await held.embed(["a photo of a cat"])

    run(repo, body)
