"""`lens classify` and `lens classifier ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lens_client import codec
from lens_client.cli_common import (
    ApiKey,
    Model,
    Server,
    app,
    classifier_app,
    connect,
    fail,
    image_files,
    print_json,
    tls_options,
)

Templates = Annotated[
    str | None,
    typer.Option(
        help="A template set (simple, openai-imagenet) or a file, one template per "
        "line, each with {} or {label}."
    ),
]


def _templates(value: str | None) -> str | list[str] | None:
    if value is None or value in ("simple", "openai-imagenet"):
        return value
    path = Path(value)
    if not path.is_file():
        fail(f"--templates {value}: not a template set (simple, openai-imagenet) or a file", 2)
    return [line for line in path.read_text().splitlines() if line.strip()]


def _labels(value: str) -> list[str]:
    return [label.strip() for label in value.split(",")]


@app.command()
@tls_options
def classify(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    labels: Annotated[str | None, typer.Option(help="Comma-separated label names.")] = None,
    templates: Templates = None,
    classifier: Annotated[str | None, typer.Option(help="A saved classifier.")] = None,
    top_k: Annotated[int, typer.Option(help="Labels per image (0: 5).")] = 0,
    multi_label: Annotated[bool, typer.Option(help="Independent labels (sigmoid).")] = False,
    threshold: Annotated[float, typer.Option(help="Multi-label: lowest probability shown.")] = 0.5,
    model: Model = None,
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Classify images zero-shot (--labels) or with a saved classifier; one JSON line each."""
    if (labels is None) == (classifier is None):
        fail("give --labels or --classifier", 2)
    for path in images:
        if not path.is_file():
            fail(f"{path}: no such file", 2)
    with connect(server, api_key=api_key, model=model) as client:
        results = client.classify(
            images,
            labels=_labels(labels) if labels is not None else None,
            templates=_templates(templates),
            classifier=classifier,
            top_k=top_k,
            multi_label=multi_label,
            threshold=threshold,
        )
    for path, result in zip(images, results, strict=True):
        print_json({"input": str(path), "labels": result})


@classifier_app.command("create")
@tls_options
def classifier_create(
    name: str,
    labels: Annotated[str | None, typer.Option(help="Zero-shot: comma-separated labels.")] = None,
    examples: Annotated[
        Path | None,
        typer.Option(help="Few-shot: a folder with one sub-folder of images per label."),
    ] = None,
    train: Annotated[
        Path | None,
        typer.Option(
            help="Linear probe: a folder with one sub-folder of training images per label."
        ),
    ] = None,
    templates: Templates = None,
    text_weight: Annotated[
        float, typer.Option(help="Few-shot: weight of the labels' zero-shot part (0-1).")
    ] = 0.0,
    model: Model = None,
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Save a classifier: zero-shot from labels, few-shot from example images, or a linear
    probe trained from labelled images."""
    if [labels, examples, train].count(None) != 2:
        fail("give --labels, --examples or --train (one of them)", 2)
    shots = _class_folders(examples) if examples is not None else None
    trained = _class_folders(train) if train is not None else None
    if trained is not None and len(trained) < 2:
        fail(f"{train}: a linear classifier needs two class sub-folders or more", 2)
    with connect(server, api_key=api_key, model=model) as client:
        info = client.create_classifier(
            name,
            labels=_labels(labels) if labels is not None else None,
            templates=_templates(templates),
            examples=shots,
            text_weight=text_weight,
            train=trained,
        )
    print_json(info)


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """Label → image files, one sub-folder per label (refused: none, or one with no images)."""
    if not folder.is_dir():
        fail(f"{folder}: no such folder", 2)
    classes = {d.name: image_files([d]) for d in sorted(folder.iterdir()) if d.is_dir()}
    if not classes:
        fail(f"{folder}: no class sub-folders", 2)
    empty = [label for label, files in classes.items() if not files]
    if empty:
        fail(f"{folder}: class {empty[0]!r} has no images", 2)
    return classes


@classifier_app.command("ls")
@tls_options
def classifier_ls(server: Server = codec.DEFAULT_SERVER, api_key: ApiKey = None) -> None:
    """List the saved classifiers, one JSON line each."""
    with connect(server, api_key=api_key) as client:
        for info in client.classifiers():
            print_json(info)


@classifier_app.command("get")
@tls_options
def classifier_get(
    name: str, server: Server = codec.DEFAULT_SERVER, api_key: ApiKey = None
) -> None:
    """A saved classifier: model, kind, labels, templates, shots, versions computed."""
    with connect(server, api_key=api_key) as client:
        print_json(client.get_classifier(name))


@classifier_app.command("delete")
@tls_options
def classifier_delete(
    name: str, server: Server = codec.DEFAULT_SERVER, api_key: ApiKey = None
) -> None:
    """Delete a saved classifier."""
    with connect(server, api_key=api_key) as client:
        client.delete_classifier(name)
    typer.echo(f"{name}: deleted", err=True)
