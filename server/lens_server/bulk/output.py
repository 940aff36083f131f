"""What `lens bulk embed` writes under `--out`.

    plan.json                   the run: model, version, shard size, inputs (a hash of the ids)
    part-00000.parquet ...      id, embedding (fixed-size list<float32>), source, caption,
                                metadata columns; `lens.model` and `lens.version` in the
                                file's metadata
    errors/part-00000.parquet   id, source, reason: the inputs of that shard that failed
    manifest.json               written last: the shards, their rows, errors, the model

A shard and its errors are written to a temporary name and renamed, errors first, so a
shard's Parquet file exists only once both are complete: `--resume` skips those.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lens_server.bulk.embedder import Target
from lens_server.bulk.inputs import Planned
from lens_server.errors import FailedPrecondition

PLAN = "plan.json"
MANIFEST = "manifest.json"
ERRORS = "errors"


@dataclass(frozen=True)
class RunPlan:
    model: str
    version: int
    dim: int
    shard_size: int
    inputs: int
    ids_sha256: str

    @classmethod
    def of(cls, target: Target, inputs: list[Planned], shard_size: int) -> RunPlan:
        digest = hashlib.sha256("\n".join(p.id for p in inputs).encode()).hexdigest()
        return cls(target.name, target.version, target.dim, shard_size, len(inputs), digest)

    @property
    def shards(self) -> int:
        return -(-self.inputs // self.shard_size)


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def prepare(out: Path, run: RunPlan, resume: bool) -> set[int]:
    """Checks `out` for this run; returns the shards already complete (with `resume`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / ERRORS).mkdir(exist_ok=True)
    plan_file = out / PLAN
    if plan_file.exists():
        if not resume:
            raise FailedPrecondition(f"{out} already holds a run: pass --resume or another --out")
        earlier = RunPlan(**json.loads(plan_file.read_text()))
        if earlier != run:
            raise FailedPrecondition(
                f"{out} holds another run ({_describe(earlier)}), not this one ({_describe(run)})"
            )
    elif any(out.glob("part-*.parquet")):
        raise FailedPrecondition(f"{out} holds shards but no {PLAN}: use another --out")
    _write_atomic(plan_file, json.dumps(asdict(run), indent=2).encode())
    return {s for s in range(run.shards) if (out / shard_name(s)).exists()}


def _describe(run: RunPlan) -> str:
    return f"{run.model}:{run.version}, {run.inputs} inputs, shards of {run.shard_size}"


def write_shard(
    out: Path,
    run: RunPlan,
    shard: int,
    inputs: list[Planned],
    vectors: np.ndarray,
    errors: list[str],
) -> tuple[int, int]:
    """Writes one shard (inputs with no error) and its errors; returns (rows, errors)."""
    import pyarrow as pa

    good = [i for i, e in enumerate(errors) if not e]
    bad = [i for i, e in enumerate(errors) if e]
    failed = pa.table(
        {
            "id": [inputs[i].id for i in bad],
            "source": [inputs[i].source for i in bad],
            "reason": [errors[i] for i in bad],
        }
    )
    _write_table(out / ERRORS / shard_name(shard), failed, run)
    flat = pa.array(np.ascontiguousarray(vectors[good]).reshape(-1), pa.float32())
    columns: dict[str, Any] = {
        "id": pa.array([inputs[i].id for i in good], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, run.dim),
        "source": pa.array([inputs[i].source for i in good], pa.string()),
    }
    if any(inputs[i].caption is not None for i in good):
        columns["caption"] = pa.array([inputs[i].caption for i in good], pa.string())
    for key in dict.fromkeys(k for i in good for k in inputs[i].metadata):
        if key not in columns:
            columns[key] = pa.array([inputs[i].metadata.get(key) for i in good])
    _write_table(out / shard_name(shard), pa.table(columns), run)
    return len(good), len(bad)


def _write_table(path: Path, table: Any, run: RunPlan) -> None:
    import pyarrow.parquet as pq

    meta = {b"lens.model": run.model.encode(), b"lens.version": str(run.version).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def write_manifest(out: Path, run: RunPlan, seconds: float) -> dict[str, Any]:
    """The manifest of a finished run, from the shards on disk."""
    import pyarrow.parquet as pq

    shards = []
    for s in range(run.shards):
        rows = pq.ParquetFile(out / shard_name(s)).metadata.num_rows
        errors = pq.ParquetFile(out / ERRORS / shard_name(s)).metadata.num_rows
        shards.append({"file": shard_name(s), "rows": rows, "errors": errors})
    manifest = {
        "model": run.model,
        "version": run.version,
        "dim": run.dim,
        "inputs": run.inputs,
        "embedded": sum(s["rows"] for s in shards),
        "errors": sum(s["errors"] for s in shards),
        "shards": shards,
        "seconds": round(seconds, 3),
    }
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_output(out: Path) -> tuple[dict[str, Any], list[Path]]:
    """The manifest of a written run and its shard files; FailedPrecondition if unfinished."""
    path = out / MANIFEST
    if not path.exists():
        raise FailedPrecondition(f"{out}: no {MANIFEST} (not a finished `lens bulk embed` run)")
    manifest = json.loads(path.read_text())
    return manifest, [out / s["file"] for s in manifest["shards"]]
