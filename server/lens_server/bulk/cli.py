"""`lens bulk ...`: registered on the `lens` command through the `lens.cli` entry point."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer


def _fail(message: str) -> NoReturn:
    typer.echo(f"lens: {message}", err=True)
    raise typer.Exit(2)


def embed(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Folders (recursive), CSV/Parquet/JSONL lists of paths or URLs, WebDataset "
            ".tar shards (brace patterns: 'shard-{0000..0099}.tar').",
            show_default=False,
        ),
    ],
    model: Annotated[str, typer.Option("--model", help="NAME[:VERSION] in the repository.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (Parquet shards).")],
    repo: Annotated[
        Path, typer.Option("--repo", envvar="LENS_REPO", help="Model repository folder.")
    ] = Path("models"),
    url_col: Annotated[str, typer.Option(help="Column of the path or URL in list files.")] = "url",
    caption_col: Annotated[
        str | None, typer.Option(help="Column of the caption in list files.", show_default=False)
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            help="Embed through this lens server (HOST:PORT) instead of the repository's files; "
            "with --to-collection, the server that holds the collection.",
            show_default=False,
        ),
    ] = None,
    to_collection: Annotated[
        str | None,
        typer.Option(
            help="Load the results into this collection of --server (created if missing).",
            show_default=False,
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            envvar="RAY_ADDRESS",
            help="Ray cluster (HOST:PORT or ray://HOST:PORT); default: a local Ray.",
            show_default=False,
        ),
    ] = None,
    num_cpus: Annotated[
        int | None,
        typer.Option(help="CPUs of the local Ray (default: all).", show_default=False),
    ] = None,
    actors: Annotated[
        int, typer.Option(help="Embedder actors (0: one per two CPUs of the cluster).")
    ] = 0,
    actor_cpus: Annotated[
        float, typer.Option(help="CPUs each actor reserves (fractions leave room to read).")
    ] = 0.5,
    actor_gpus: Annotated[
        float, typer.Option(help="GPUs each actor reserves (its towers then run on CUDA).")
    ] = 0.0,
    read_cpus: Annotated[
        float, typer.Option(help="CPUs each read-and-decode task reserves.")
    ] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Inputs per batch.")] = 64,
    shard_size: Annotated[int, typer.Option(help="Inputs per output shard.")] = 10_000,
    resume: Annotated[
        bool, typer.Option("--resume", help="Keep the complete shards of an earlier run.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Embed images on Ray Data into Parquet shards, as the server would embed them."""
    from lens_server.bulk.embedder import resolve
    from lens_server.bulk.inputs import ListColumns, plan
    from lens_server.bulk.run import Job, connect, run
    from lens_server.errors import LensError

    if to_collection and not server:
        _fail("--to-collection needs --server HOST:PORT")
    try:
        target, version = resolve(repo, model)
        planned = plan(inputs, ListColumns(url_col, caption_col))
        if not planned:
            _fail(f"no image inputs in {' '.join(inputs)}")
        assert version.image is not None
        job = Job(
            repo,
            out,
            target,
            version.image,
            server=None if to_collection else server,
            shard_size=shard_size,
            batch_size=batch_size,
            actors=actors,
            actor_cpus=actor_cpus,
            actor_gpus=actor_gpus,
            read_cpus=read_cpus,
            resume=resume,
            progress=not quiet,
        )
        connect(address, num_cpus)
        manifest = run(job, planned)
    except (LensError, ValueError) as e:
        _fail(str(e))
    if to_collection:
        assert server is not None
        from lens_client.cli_import import load_output

        manifest["collection"] = load_output(server, to_collection, out)
    sys.stdout.write(json.dumps(manifest) + "\n")


def register(app: typer.Typer) -> None:
    """Adds `lens bulk` to the `lens` command."""
    bulk = typer.Typer(help="Embed whole datasets on Ray Data.", no_args_is_help=True)
    bulk.command("embed")(embed)
    app.add_typer(bulk, name="bulk")
