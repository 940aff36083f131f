"""`lens index import NAME DIR`: a `lens bulk embed` output loaded into a collection.

The vectors go in as they were computed (no re-embedding), in batches; items are upserted by
id, so importing the same output twice leaves one item per id. The collection is created,
pinned to the run's model version, when it does not exist. pyarrow is imported inside the
command: the client package does not need it otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lens_client import codec
from lens_client.cli_common import ApiKey, Server, connect, fail, index_app, tls_options

# Columns of a shard that are not the item's metadata.
_NOT_METADATA = ("id", "embedding")


@index_app.command("import")
@tls_options
def index_import(
    name: str,
    folder: Annotated[Path, typer.Argument(help="The --out folder of `lens bulk embed`.")],
    batch_size: Annotated[int, typer.Option(help="Items per upsert request.")] = 256,
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Load the vectors of a `lens bulk embed` output into a collection (created if missing,
    pinned to the run's model version); ids already there are replaced, not doubled."""
    result = load_output(server, name, folder, batch_size=batch_size, api_key=api_key)
    typer.echo(f"{name}: imported {result['imported']} items from {folder}", err=True)


def load_output(
    server: str,
    name: str,
    folder: Path,
    *,
    batch_size: int = 256,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Upserts every shard of the output at `folder` into collection `name`; fails the
    command with one line (exit 2) where the folder is no finished output."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        fail("`lens index import` needs pyarrow: pip install 'lens[bulk]'", 2)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        fail(f"{folder}: no manifest.json (not a finished `lens bulk embed` output)", 2)
    manifest = json.loads(manifest_path.read_text())
    model = f"{manifest['model']}:{manifest['version']}"
    imported = 0
    with connect(server, api_key=api_key) as client:
        if name not in {c["name"] for c in client.collections()}:
            client.create_collection(name, model=model)
        for shard in manifest["shards"]:
            path = folder / shard["file"]
            if not path.is_file():
                fail(f"{path}: listed in the manifest but missing", 2)
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                rows = batch.to_pylist()
                vectors = batch.column("embedding").flatten().to_numpy()
                imported += client.upsert(
                    name,
                    [r["id"] for r in rows],
                    vectors=vectors.reshape(len(rows), -1),
                    metadata=[_metadata(r) for r in rows],
                    batch_size=batch_size,
                    progress=sys.stderr.isatty(),
                )
    return {"name": name, "model": model, "imported": imported}


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
        for k, v in row.items()
        if k not in _NOT_METADATA
    }
