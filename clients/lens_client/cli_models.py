"""`lens embed` and `lens health`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from lens_client import codec
from lens_client.cli_common import ApiKey, Model, Server, app, connect, fail, tls_options


@app.command()
@tls_options
def embed(
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="A text (repeatable).")
    ] = None,
    image: Annotated[
        list[Path] | None, typer.Option("--image", "-i", help="An image file (repeatable).")
    ] = None,
    model: Model = None,
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
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
    with connect(server, api_key=api_key, model=model) as client:
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
@tls_options
def health(server: Server = codec.DEFAULT_SERVER) -> None:
    """Exit 0 if the server answers SERVING to the gRPC health check, else 1."""
    with connect(server, retries=0, timeout=5) as client:
        ok = client.healthy()
    typer.echo("SERVING" if ok else "NOT SERVING")
    raise typer.Exit(0 if ok else 1)
