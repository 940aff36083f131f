"""`lens index ...` and `lens search`: collections."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from lens_client import codec
from lens_client.cli_common import (
    ApiKey,
    Model,
    Server,
    app,
    connect,
    fail,
    image_files,
    index_app,
    print_json,
    tls_options,
)


@index_app.command("create")
@tls_options
def index_create(
    name: str,
    model: Model = None,
    index_type: Annotated[str, typer.Option("--type", help="auto, flat, hnsw or ivf-pq.")] = "auto",
    metric: Annotated[str, typer.Option(help="cosine, inner_product or l2.")] = "cosine",
    dim: Annotated[int, typer.Option(help="Vectors only: their length (no model).")] = 0,
    storage: Annotated[
        str,
        typer.Option(
            help="How the index holds vectors: float32, float16, int8, or binary (sign bits, "
            "flat only, rescored exactly from the stored vectors)."
        ),
    ] = "float32",
    backend: Annotated[
        str,
        typer.Option(
            help="Where the collection lives: faiss (this server), milvus (the server's "
            "Milvus engine, --milvus-uri) or pgvector (its PostgreSQL, --pg-dsn)."
        ),
    ] = "faiss",
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Create a collection pinned to a model version (or of raw vectors with --dim)."""
    if backend not in ("faiss", "milvus", "pgvector"):
        fail(f"--backend must be faiss, milvus or pgvector, got {backend!r}", 2)
    with connect(server, api_key=api_key) as client:
        print_json(
            client.create_collection(
                name,
                model=model,
                index=index_type,
                metric=metric,
                dim=dim,
                storage=storage,
                backend=backend,
            )
        )


@index_app.command("add")
@tls_options
def index_add(
    name: str,
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).")],
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 32,
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Add images; ids are the file paths. Ids already present are skipped, so a re-run
    after an interruption adds only what is missing."""
    files = image_files(paths)
    if not files:
        fail("no image files found (jpg, jpeg, png, webp, bmp, gif)", 2)
    ids = [str(f) for f in files]
    with connect(server, api_key=api_key) as client:
        present = {
            item["id"]
            for start in range(0, len(ids), 1000)
            for item in client.get(name, ids[start : start + 1000])
        }
        todo = [i for i in ids if i not in present]
        added = (
            client.upsert(
                name, todo, images=todo, batch_size=batch_size, progress=sys.stderr.isatty()
            )
            if todo
            else 0
        )
    typer.echo(f"{name}: added {added}, skipped {len(present)} already present", err=True)


@app.command()
@tls_options
def search(
    name: str,
    image: Annotated[Path | None, typer.Option(help="Query image file.")] = None,
    text: Annotated[str | None, typer.Option(help="Query text.")] = None,
    item: Annotated[str | None, typer.Option("--id", help="An item of the collection.")] = None,
    k: Annotated[int, typer.Option(help="Hits to return.")] = 10,
    filter_json: Annotated[
        str | None, typer.Option("--filter", help='JSON, e.g. \'{"album": "2024"}\'.')
    ] = None,
    exact: Annotated[bool, typer.Option(help="Brute-force search (for checking recall).")] = False,
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Search a collection by image, text or item id; one JSON line per hit."""
    if sum(q is not None for q in (image, text, item)) != 1:
        fail("give exactly one of --image, --text or --id", 2)
    if image is not None and not image.is_file():
        fail(f"{image}: no such file", 2)
    try:
        filter_ = json.loads(filter_json) if filter_json else None
    except json.JSONDecodeError as e:
        fail(f"--filter is not JSON: {e}", 2)
    with connect(server, api_key=api_key) as client:
        hits = client.search(
            name, image=image, text=text, id=item, k=k, filter=filter_, exact=exact
        )
    for hit in hits:
        print_json(hit)


@index_app.command("ls")
@tls_options
def index_ls(server: Server = codec.DEFAULT_SERVER, api_key: ApiKey = None) -> None:
    """List the collections, one JSON line each."""
    with connect(server, api_key=api_key) as client:
        for info in client.collections():
            print_json(info)


@index_app.command("describe")
@tls_options
def index_describe(
    name: str, server: Server = codec.DEFAULT_SERVER, api_key: ApiKey = None
) -> None:
    """Count, dimension, model version, index, memory, last snapshot."""
    with connect(server, api_key=api_key) as client:
        print_json(client.describe_collection(name))


@index_app.command("reindex")
@tls_options
def index_reindex(
    name: str,
    version: Annotated[
        int, typer.Option(help="Version of the collection's model; 0: the serving one.")
    ] = 0,
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Re-embed every item with another model version, in the background (searches keep
    answering from the current vectors until it swaps)."""
    with connect(server, api_key=api_key) as client:
        print_json(client.reindex_collection(name, version))


@index_app.command("drop")
@tls_options
def index_drop(name: str, server: Server = codec.DEFAULT_SERVER, api_key: ApiKey = None) -> None:
    """Delete a collection and its files."""
    with connect(server, api_key=api_key) as client:
        client.drop_collection(name)
    typer.echo(f"{name}: dropped", err=True)


@index_app.command("dedup")
@tls_options
def index_dedup(
    name: str,
    threshold: Annotated[
        float, typer.Option(help="Similarity from which items are duplicates.")
    ] = 0.95,
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Print groups of near-duplicate items, one JSON line per group."""
    with connect(server, api_key=api_key) as client:
        found = client.find_duplicates(name, threshold)
    for group in found["groups"]:
        print_json(group)
