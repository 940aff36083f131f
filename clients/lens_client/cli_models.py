"""`lens serve`, `lens embed`, `lens health`, `lens import`."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from lens_client import codec
from lens_client.cli_common import (
    Model,
    Repo,
    Server,
    app,
    connect,
    describe_version,
    fail,
    import_app,
    parse_bytes,
    written,
)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 50051,
    repo: Repo = Path("models"),
    collections: Annotated[
        Path, typer.Option(envvar="LENS_COLLECTIONS", help="Folder of the collections.")
    ] = Path("collections"),
    default_model: Annotated[
        str | None,
        typer.Option(envvar="LENS_DEFAULT_MODEL", help="Model for requests naming none."),
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(help="Inputs per batch, per tower (default: 256 on a GPU, 32 on CPUs)."),
    ] = None,
    max_queue_delay_ms: Annotated[float, typer.Option(help="Longest wait to fill a batch.")] = 5.0,
    max_queue_size: Annotated[
        int, typer.Option(help="Inputs waiting per tower before RESOURCE_EXHAUSTED.")
    ] = 4096,
    instances: Annotated[int, typer.Option(help="Batches run at once per tower.")] = 1,
    runtime_engine: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="What runs the towers: auto (ONNX Runtime; on a GPU the fp16 program where "
            "a warm-up measurement finds it faster), onnx, or program.",
        ),
    ] = "auto",
    image_decode: Annotated[
        str,
        typer.Option(
            help="Where JPEGs are decoded: auto (on the GPU when the image tower runs on one), "
            "cpu, or device (the image tower's device)."
        ),
    ] = "auto",
    threads: Annotated[
        int, typer.Option(help="ONNX Runtime threads per op (0: one per core).")
    ] = 0,
    decode_workers: Annotated[
        int | None, typer.Option(help="Image decoding threads (default: one per core).")
    ] = None,
    max_inputs: Annotated[int, typer.Option(help="Inputs per request.")] = 1024,
    max_labels: Annotated[int, typer.Option(help="Labels per classifier.")] = 5000,
    memory_budget: Annotated[
        str,
        typer.Option(
            help="Weights all loaded versions may hold, e.g. 8GiB (a deploy holds two "
            "versions at once); 0: no limit."
        ),
    ] = "0",
    poll_s: Annotated[
        float,
        typer.Option(help="Seconds between reads of the repository; 0: only on `models reload`."),
    ] = 10.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve the models of a repository over gRPC."""
    import asyncio

    from lens_server.app import serve as run
    from lens_server.config import BatchConfig, Limits, RuntimeConfig, ServerConfig
    from lens_server.errors import LensError
    from lens_server.gpu import cuda_available

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        runtime = RuntimeConfig(
            engine=runtime_engine, image_decode=image_decode, intra_op_threads=threads
        )
        if decode_workers is not None:
            runtime = replace(runtime, decode_workers=decode_workers)
        config = ServerConfig(
            repo=repo,
            collections=collections,
            host=host,
            port=port,
            default_model=default_model,
            batch=BatchConfig(
                max_batch_size or (256 if cuda_available() else 32),
                max_queue_delay_ms,
                max_queue_size,
                instances,
            ),
            limits=Limits(max_inputs_per_request=max_inputs, max_labels=max_labels),
            runtime=runtime,
            memory_budget_bytes=parse_bytes(memory_budget),
            poll_s=poll_s,
        )
        asyncio.run(run(config))
    except (ValueError, LensError, OSError) as e:
        fail(str(e))


@app.command()
def embed(
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="A text (repeatable).")
    ] = None,
    image: Annotated[
        list[Path] | None, typer.Option("--image", "-i", help="An image file (repeatable).")
    ] = None,
    model: Model = None,
    server: Server = codec.DEFAULT_SERVER,
    batch_size: Annotated[int, typer.Option(help="Inputs per request.")] = 32,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = False,
) -> None:
    """Embed images and texts; print one JSON line per input (images first, then texts)."""
    images, texts = image or [], text or []
    if not images and not texts:
        fail("give at least one --text or --image", 2)
    for path in images:
        if not path.is_file():
            fail(f"{path}: no such file", 2)
    with connect(server, model=model) as client:
        inputs = [*codec.image_inputs(images), *codec.text_inputs(texts)]
        result = client.embed(inputs, batch_size=batch_size, progress=progress, total=len(inputs))
    labels = [str(p) for p in images] + texts
    for label, vector in zip(labels, result.vectors, strict=True):
        line = {
            "input": label,
            "model": result.model,
            "version": result.version,
            "embedding": [round(float(v), 7) for v in vector],
        }
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")


@app.command()
def health(server: Server = codec.DEFAULT_SERVER) -> None:
    """Exit 0 if the server answers SERVING to the gRPC health check, else 1."""
    with connect(server, retries=0, timeout=5) as client:
        ok = client.healthy()
    typer.echo("SERVING" if ok else "NOT SERVING")
    raise typer.Exit(0 if ok else 1)


@import_app.command("openclip")
def import_openclip(
    arch: Annotated[str, typer.Option(help="open_clip architecture, e.g. ViT-B-32.")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    pretrained: Annotated[
        str | None,
        typer.Option(
            envvar="LENS_PRETRAINED",
            help="A checkpoint file or a pretrained tag; default: random weights.",
        ),
    ] = None,
    repo: Repo = Path("models"),
    if_missing: Annotated[
        bool, typer.Option(help="Do nothing if the model has a version.")
    ] = False,
) -> None:
    """Import an open_clip model: export both towers to ONNX, check parity, add a version."""
    _import(repo, name, if_missing, "openclip", arch=arch, pretrained=pretrained or None)


@import_app.command("hf")
def import_hf(
    folder: Annotated[Path, typer.Argument(help="A local transformers CLIPModel folder.")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    repo: Repo = Path("models"),
    if_missing: Annotated[
        bool, typer.Option(help="Do nothing if the model has a version.")
    ] = False,
) -> None:
    """Import a transformers CLIPModel folder: export, check parity, add a version."""
    if not folder.is_dir():
        fail(f"{folder}: no such folder", 2)
    _import(repo, name, if_missing, "hf", folder=folder)


def _import(repo: Path, name: str, if_missing: bool, source: str, **kwargs: object) -> None:
    from lens_server.errors import LensError
    from lens_server.repository import Repository
    from lens_training.export import ParityError

    repository = Repository(repo)
    if if_missing and name in repository.models():
        version = repository.latest(name)
        typer.echo(
            f"{name}: version {version} is already in {repo} "
            f"({describe_version(repository, name, version)})"
        )
        return
    what = kwargs.get("arch") or kwargs.get("folder")
    weights = kwargs.get("pretrained") or ("random weights" if source == "openclip" else "")
    typer.echo(
        f"importing {source} {what} as {name} ({weights or 'weights from the folder'})…", err=True
    )
    logging.basicConfig(level=logging.WARNING)
    try:
        if source == "openclip":
            from lens_training.export.openclip import import_openclip

            version, path = import_openclip(repository, name=name, **kwargs)  # type: ignore[arg-type]
        else:
            from lens_training.export.hf import import_hf

            version, path = import_hf(repository, name=name, **kwargs)  # type: ignore[arg-type]
    except (ParityError, LensError, ValueError, RuntimeError, OSError) as e:
        fail(f"import failed, nothing written: {e}")
    written(repository, name, version, path)
