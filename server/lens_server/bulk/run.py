"""A `lens bulk embed` run on Ray Data: read tasks, an actor pool of embedders, shards.

The driver plans the inputs (`inputs.plan`), leaves out the shards a `--resume` finds done,
and streams the rest through Ray Data: `map_batches(read_batch)` reads bytes and
`map_batches(decode_batch)` preprocesses them in parallel tasks (fused into one),
`map_batches(VersionEmbedder | ServerEmbedder)` embeds them on an actor pool. Results
come back to the driver, which writes each shard once all its inputs are in.

Actors and read tasks ask for a fraction of a CPU (`actor_cpus`, `read_cpus`): an actor pool
holding every CPU leaves the read tasks none, and the job waits forever. ONNX Runtime still
uses the node's cores.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lens_server.bulk import output
from lens_server.bulk.embedder import ServerEmbedder, Target, VersionEmbedder, decode_batch
from lens_server.bulk.inputs import Planned, read_batch
from lens_server.config import ServerConfig
from lens_server.errors import FailedPrecondition, Unavailable
from lens_server.repository.manifest import ImageSpec


@dataclass(frozen=True)
class Job:
    repo: Path
    out: Path
    target: Target
    image: ImageSpec  # the version's preprocessing, for the read tasks
    server: str | None = None  # embed through this lens server instead of the repository
    shard_size: int = 10_000
    batch_size: int = 64
    actors: int = 0  # 0: one per two CPUs of the cluster, at least one
    actor_cpus: float = 0.5
    actor_gpus: float = 0.0  # per actor: a GPU node's towers run on CUDA, as the server's
    read_cpus: float = 0.5
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.shard_size < 1 or self.batch_size < 1 or self.actors < 0:
            raise ValueError("--shard-size and --batch-size must be >= 1, --actors >= 0")
        if self.actor_cpus <= 0 or self.read_cpus <= 0 or self.actor_gpus < 0:
            raise ValueError("--actor-cpus and --read-cpus must be > 0, --actor-gpus >= 0")


def connect(address: str | None, num_cpus: int | None) -> None:
    """`ray.init`: a cluster at `address` (or RAY_ADDRESS), else a local Ray on this machine.
    Unavailable, at once, where the address does not answer."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "auto":
        _check_answers(address)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if not address:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=address, ignore_reinit_error=True, **kwargs)
    except (ConnectionError, RuntimeError) as e:
        raise Unavailable(f"Ray at {address} does not answer: {e}") from None
    for name in ("ray", "ray.data"):  # Ray Data's per-dataset notices would bury the bar
        logging.getLogger(name).setLevel(logging.WARNING)


def _check_answers(address: str) -> None:
    hostport = address.removeprefix("ray://").rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not port.isdigit():
        raise Unavailable(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as e:
        raise Unavailable(f"Ray at {address} does not answer ({e.strerror or e})") from None


def run(job: Job, inputs: list[Planned]) -> dict[str, Any]:
    """Embeds `inputs` into `job.out`; returns the manifest."""
    import ray

    started = time.perf_counter()
    plan = output.RunPlan.of(job.target, inputs, job.shard_size)
    done = output.prepare(job.out, plan, job.resume)
    todo = [i for i in range(len(inputs)) if i // job.shard_size not in done]
    bar = _bar(len(inputs), len(inputs) - len(todo), job.progress)
    if todo:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_progress = False
        rows = [{"index": i, "source": inputs[i].source, "member": inputs[i].member} for i in todo]
        blocks = _blocks(len(rows), job.batch_size)
        ds: ray.data.Dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        ds = ds.map_batches(
            read_batch, batch_size=job.batch_size, batch_format="numpy", num_cpus=job.read_cpus
        )
        if not job.server:  # decoded where read; a server decodes what it is sent
            ds = ds.map_batches(
                partial(decode_batch, spec=job.image, limits=ServerConfig().limits),
                batch_size=job.batch_size,
                batch_format="numpy",
                num_cpus=job.read_cpus,
            )
        actors = job.actors or max(1, int(ray.cluster_resources().get("CPU", 2) // 2))
        embedder, kwargs = _embedder(job)
        ds = ds.map_batches(
            embedder,
            fn_constructor_kwargs=kwargs,
            batch_size=job.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=job.actor_cpus,
            num_gpus=job.actor_gpus,
        )
        _collect(job, plan, inputs, ds, bar)
    bar.close()
    return output.write_manifest(job.out, plan, time.perf_counter() - started)


def _blocks(rows: int, batch_size: int) -> int:
    return max(1, min(rows // batch_size + 1, 200))


def _embedder(job: Job) -> tuple[type, dict[str, Any]]:
    t = job.target
    if job.server:
        kwargs = {"server": job.server, "name": t.name, "version": t.version, "dim": t.dim}
        return ServerEmbedder, kwargs
    return VersionEmbedder, {"repo": str(job.repo.resolve()), "name": t.name, "version": t.version}


def _collect(job: Job, plan: output.RunPlan, inputs: list[Planned], ds: Any, bar: Any) -> None:
    """Gathers results by shard, writing each shard once all its inputs are in."""
    size = job.shard_size
    vectors: dict[int, np.ndarray] = {}
    errors: dict[int, list[str]] = {}
    left: dict[int, int] = defaultdict(int)
    for shard in {i // size for i in range(len(inputs))}:
        left[shard] = len(range(shard * size, min((shard + 1) * size, len(inputs))))
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for index, vector, error in zip(
            batch["index"], batch["embedding"], batch["error"], strict=True
        ):
            index = int(index)
            shard, row = divmod(index, size)
            if shard not in vectors:
                vectors[shard] = np.zeros((left[shard], plan.dim), np.float32)
                errors[shard] = [""] * left[shard]
            vectors[shard][row] = vector
            errors[shard][row] = str(error)
            left[shard] -= 1
            if not left[shard]:
                part = inputs[shard * size : shard * size + len(errors[shard])]
                done = vectors.pop(shard), errors.pop(shard)
                output.write_shard(job.out, plan, shard, part, *done)
        bar.update(len(batch["index"]))
    if vectors:
        missing = sorted(vectors)
        raise FailedPrecondition(f"Ray returned no result for some inputs of shards {missing}")


def _bar(total: int, done: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="input", disable=not show, smoothing=0.1)
