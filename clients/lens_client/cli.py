"""The `lens` command.

Client commands talk to a server (`--server HOST:PORT`, or LENS_SERVER); repository commands
work on a model repository (`--repo DIR`, or LENS_REPO). Errors are one line on stderr and a
non-zero exit code.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from lens_client import codec

if TYPE_CHECKING:
    from lens_client.client import LensClient
    from server.repository import Repository

app = typer.Typer(
    name="lens",
    no_args_is_help=True,
    add_completion=False,
    help="lens: image and text embeddings over gRPC, and the models behind them.",
)
import_app = typer.Typer(no_args_is_help=True, help="Import a model into the repository.")
app.add_typer(import_app, name="import")
index_app = typer.Typer(no_args_is_help=True, help="Collections of images, texts and vectors.")
app.add_typer(index_app, name="index")
classifier_app = typer.Typer(no_args_is_help=True, help="Saved zero-shot and few-shot classifiers.")
app.add_typer(classifier_app, name="classifier")

Server = Annotated[
    str, typer.Option("--server", envvar="LENS_SERVER", help="Server address HOST:PORT.")
]
Repo = Annotated[Path, typer.Option("--repo", envvar="LENS_REPO", help="Model repository folder.")]
Model = Annotated[
    str | None, typer.Option("--model", help="NAME[:VERSION]; default: the server's default.")
]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"lens: {message}", err=True)
    raise typer.Exit(code)


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
    max_batch_size: Annotated[int, typer.Option(help="Inputs per batch, per tower.")] = 32,
    max_queue_delay_ms: Annotated[float, typer.Option(help="Longest wait to fill a batch.")] = 5.0,
    max_queue_size: Annotated[
        int, typer.Option(help="Inputs waiting per tower before RESOURCE_EXHAUSTED.")
    ] = 4096,
    instances: Annotated[int, typer.Option(help="Batches run at once per tower.")] = 1,
    threads: Annotated[
        int, typer.Option(help="ONNX Runtime threads per op (0: one per core).")
    ] = 0,
    decode_workers: Annotated[
        int | None, typer.Option(help="Image decoding threads (default: one per core).")
    ] = None,
    max_inputs: Annotated[int, typer.Option(help="Inputs per request.")] = 1024,
    max_labels: Annotated[int, typer.Option(help="Labels per classifier.")] = 5000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve the models of a repository over gRPC."""
    import asyncio

    from server.app import serve as run
    from server.config import BatchConfig, Limits, RuntimeConfig, ServerConfig
    from server.errors import LensError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        runtime = RuntimeConfig(intra_op_threads=threads)
        if decode_workers is not None:
            runtime = RuntimeConfig(intra_op_threads=threads, decode_workers=decode_workers)
        config = ServerConfig(
            repo=repo,
            collections=collections,
            host=host,
            port=port,
            default_model=default_model,
            batch=BatchConfig(max_batch_size, max_queue_delay_ms, max_queue_size, instances),
            limits=Limits(max_inputs_per_request=max_inputs, max_labels=max_labels),
            runtime=runtime,
        )
        asyncio.run(run(config))
    except (ValueError, LensError, OSError) as e:
        fail(str(e))


@app.command()
def models(
    name: Annotated[str | None, typer.Argument(help="One model; default: all.")] = None,
    server: Server = codec.DEFAULT_SERVER,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the server's models and their versions."""
    with _client(server) as client:
        found = [client.get_model(name)] if name else client.models()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    for model in found:
        default = " (default)" if model["default"] else ""
        typer.echo(
            f"{model['name']}{default}: {model['kind']}, dim {model['dim']}, "
            f"{'+'.join(model['modalities'])}, serving version {model['serving_version']}"
        )
        for v in model["versions"]:
            reason = f": {v['reason']}" if v["reason"] else ""
            on = f" on {', '.join(v['providers'])}" if v["providers"] else ""
            typer.echo(f"  version {v['version']}: {v['state']}{on}  [{v['source']}]{reason}")


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
    with _client(server, model=model) as client:
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
    with _client(server, retries=0, timeout=5) as client:
        ok = client.healthy()
    typer.echo("SERVING" if ok else "NOT SERVING")
    raise typer.Exit(0 if ok else 1)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@contextmanager
def _client(server: str, **options: Any) -> Iterator[LensClient]:
    """A client whose refusals (and bad arguments) end the command with one line."""
    from lens_client.client import LensClient

    try:
        with LensClient(server, **options) as client:
            yield client
    except (codec.LensClientError, ValueError) as e:
        fail(str(e))


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")


@index_app.command("create")
def index_create(
    name: str,
    model: Model = None,
    index_type: Annotated[str, typer.Option("--type", help="auto, flat, hnsw or ivf-pq.")] = "auto",
    metric: Annotated[str, typer.Option(help="cosine, inner_product or l2.")] = "cosine",
    dim: Annotated[int, typer.Option(help="Vectors only: their length (no model).")] = 0,
    server: Server = codec.DEFAULT_SERVER,
) -> None:
    """Create a collection pinned to a model version (or of raw vectors with --dim)."""
    with _client(server) as client:
        _print_json(
            client.create_collection(name, model=model, index=index_type, metric=metric, dim=dim)
        )


@index_app.command("add")
def index_add(
    name: str,
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).")],
    batch_size: Annotated[int, typer.Option(help="Images per request.")] = 32,
    server: Server = codec.DEFAULT_SERVER,
) -> None:
    """Add images; ids are the file paths. Ids already present are skipped, so a re-run
    after an interruption adds only what is missing."""
    files = _image_files(paths)
    if not files:
        fail("no image files found (jpg, jpeg, png, webp, bmp, gif)", 2)
    ids = [str(f) for f in files]
    with _client(server) as client:
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
    with _client(server) as client:
        hits = client.search(
            name, image=image, text=text, id=item, k=k, filter=filter_, exact=exact
        )
    for hit in hits:
        _print_json(hit)


@index_app.command("ls")
def index_ls(server: Server = codec.DEFAULT_SERVER) -> None:
    """List the collections, one JSON line each."""
    with _client(server) as client:
        for info in client.collections():
            _print_json(info)


@index_app.command("describe")
def index_describe(name: str, server: Server = codec.DEFAULT_SERVER) -> None:
    """Count, dimension, model version, index, memory, last snapshot."""
    with _client(server) as client:
        _print_json(client.describe_collection(name))


@index_app.command("drop")
def index_drop(name: str, server: Server = codec.DEFAULT_SERVER) -> None:
    """Delete a collection and its files."""
    with _client(server) as client:
        client.drop_collection(name)
    typer.echo(f"{name}: dropped", err=True)


@index_app.command("dedup")
def index_dedup(
    name: str,
    threshold: Annotated[
        float, typer.Option(help="Similarity from which items are duplicates.")
    ] = 0.95,
    server: Server = codec.DEFAULT_SERVER,
) -> None:
    """Print groups of near-duplicate items, one JSON line per group."""
    with _client(server) as client:
        found = client.find_duplicates(name, threshold)
    for group in found["groups"]:
        _print_json(group)


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
) -> None:
    """Classify images zero-shot (--labels) or with a saved classifier; one JSON line each."""
    if (labels is None) == (classifier is None):
        fail("give --labels or --classifier", 2)
    for path in images:
        if not path.is_file():
            fail(f"{path}: no such file", 2)
    with _client(server, model=model) as client:
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
        _print_json({"input": str(path), "labels": result})


@classifier_app.command("create")
def classifier_create(
    name: str,
    labels: Annotated[str | None, typer.Option(help="Zero-shot: comma-separated labels.")] = None,
    examples: Annotated[
        Path | None,
        typer.Option(help="Few-shot: a folder with one sub-folder of images per label."),
    ] = None,
    templates: Templates = None,
    text_weight: Annotated[
        float, typer.Option(help="Few-shot: weight of the labels' zero-shot part (0-1).")
    ] = 0.0,
    model: Model = None,
    server: Server = codec.DEFAULT_SERVER,
) -> None:
    """Save a classifier: zero-shot from labels, or few-shot from example images."""
    if (labels is None) == (examples is None):
        fail("give --labels or --examples", 2)
    shots: dict[str, list[Path]] | None = None
    if examples is not None:
        if not examples.is_dir():
            fail(f"{examples}: no such folder", 2)
        shots = {d.name: _image_files([d]) for d in sorted(examples.iterdir()) if d.is_dir()}
        if not shots:
            fail(f"{examples}: no class sub-folders", 2)
        empty = [label for label, files in shots.items() if not files]
        if empty:
            fail(f"{examples}: class {empty[0]!r} has no images", 2)
    with _client(server, model=model) as client:
        info = client.create_classifier(
            name,
            labels=_labels(labels) if labels is not None else None,
            templates=_templates(templates),
            examples=shots,
            text_weight=text_weight,
        )
    _print_json(info)


@classifier_app.command("ls")
def classifier_ls(server: Server = codec.DEFAULT_SERVER) -> None:
    """List the saved classifiers, one JSON line each."""
    with _client(server) as client:
        for info in client.classifiers():
            _print_json(info)


@classifier_app.command("get")
def classifier_get(name: str, server: Server = codec.DEFAULT_SERVER) -> None:
    """A saved classifier: model, kind, labels, templates, shots, versions computed."""
    with _client(server) as client:
        _print_json(client.get_classifier(name))


@classifier_app.command("delete")
def classifier_delete(name: str, server: Server = codec.DEFAULT_SERVER) -> None:
    """Delete a saved classifier."""
    with _client(server) as client:
        client.delete_classifier(name)
    typer.echo(f"{name}: deleted", err=True)


def _image_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            fail(f"{path}: no such file or folder", 2)
    return files


DEFAULT_ARCH = {"clip": "lens-tiny-clip", "simclr": "lens-tiny-resnet", "mae": "lens-tiny-vit"}


@app.command()
def train(
    method: Annotated[str, typer.Argument(help="clip, simclr or mae.")],
    data: Annotated[
        str,
        typer.Option(
            help="mnist, digits, an image folder (class "
            "sub-folders), a .jsonl/.csv of path,caption, or .tar "
            "shards."
        ),
    ],
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture: a name in training/configs, an open_clip model, or a .json config."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (checkpoint, metrics.jsonl).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps (0: from --epochs).")] = 0,
    epochs: Annotated[float, typer.Option(help="Passes over the training split.")] = 1.0,
    batch_size: Annotated[
        int, typer.Option(help="Global batch (all ranks, all accumulation steps).")
    ] = 256,
    accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (0: the method's).")] = 0.0,
    optimizer: Annotated[str, typer.Option(help="adamw or lars (default: the paper's).")] = "",
    holdout: Annotated[
        float, typer.Option(help="Held-out images: a count, or a fraction < 1.")
    ] = 1000,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option(help="bf16 (autocast on a GPU) or fp32.")] = "bf16",
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps (0: at the end).")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its checkpoint.")
    ] = False,
    init: Annotated[str, typer.Option(help="Start from a repository version NAME[:VERSION].")] = "",
    export: Annotated[str, typer.Option(help="Export the result as a new version of NAME.")] = "",
    if_missing: Annotated[
        bool, typer.Option(help="With --export: do nothing if NAME already has a version.")
    ] = False,
    repo: Repo = Path("models"),
) -> None:
    """Train a CLIP, SimCLR or MAE encoder; evaluate it against its random init."""
    from training.loop import TrainConfig, Trainer, TrainError

    if method not in DEFAULT_ARCH:
        fail(f"unknown method {method!r}: use clip, simclr or mae", 2)
    if if_missing and export:
        from server.repository import Repository

        repository = Repository(repo)
        if export in repository.models():
            version = repository.latest(export)
            typer.echo(
                f"{export}: version {version} is already in {repo} "
                f"({_describe(repository, export, version)})"
            )
            return
    if out is None:
        if resume:
            fail("--resume needs --out RUN_DIR", 2)
        from datetime import datetime

        out = Path("runs") / f"{method}-{datetime.now():%Y%m%d-%H%M%S}"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        config = TrainConfig(
            method=method,
            data=data,
            arch=arch or ("" if init else DEFAULT_ARCH[method]),
            out=str(out),
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            accum=accum,
            lr=lr,
            optimizer=optimizer,
            holdout=holdout,
            seed=seed,
            device=device,
            precision=precision,
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            init=init,
            repo=str(repo),
        )
        result = Trainer(config, resume=resume).run()
    except TrainError as e:
        fail(str(e))
    summary = {
        "run": str(out),
        "steps": result["steps"],
        "seconds": round(result["seconds"], 1),
        "final_loss": result["final_loss"],
        "eval": result["eval"],
        "random_init": result["baseline"],
    }
    typer.echo(json.dumps(summary))
    if export:
        _export(out, export, repo)


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="A training run folder.")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    repo: Repo = Path("models"),
) -> None:
    """Export a trained run as the next version of NAME (parity-checked)."""
    _export(run, name, repo)


def _export(run: Path, name: str, repo: Path) -> None:
    from server.errors import LensError
    from server.repository import Repository
    from training.export import ParityError
    from training.export.trained import export_run
    from training.loop import TrainError

    repository = Repository(repo)
    try:
        version, path = export_run(repository, run, name)
    except (ParityError, LensError, TrainError, OSError) as e:
        fail(f"export failed, nothing written: {e}")
    typer.echo(
        f"{name}: version {version} written to {path} ({_describe(repository, name, version)})"
    )


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
    from server.errors import LensError
    from server.repository import Repository
    from training.export import ParityError

    repository = Repository(repo)
    if if_missing and name in repository.models():
        version = repository.latest(name)
        typer.echo(
            f"{name}: version {version} is already in {repo} "
            f"({_describe(repository, name, version)})"
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
            from training.export.openclip import import_openclip

            version, path = import_openclip(repository, name=name, **kwargs)  # type: ignore[arg-type]
        else:
            from training.export.hf import import_hf

            version, path = import_hf(repository, name=name, **kwargs)  # type: ignore[arg-type]
    except (ParityError, LensError, ValueError, RuntimeError, OSError) as e:
        fail(f"import failed, nothing written: {e}")
    typer.echo(
        f"{name}: version {version} written to {path} ({_describe(repository, name, version)})"
    )


def _describe(repository: Repository, name: str, version: int) -> str:
    manifest = repository.manifest(name, version)
    source = manifest.source
    weights = source.get("pretrained") or (
        "random weights" if source.get("type") == "openclip" else "weights from the folder"
    )
    parity = ", ".join(f"{t} parity {p['min_cosine']:.6f}" for t, p in manifest.parity.items())
    return f"{source.get('type')}:{source.get('arch')}, {weights}, dim {manifest.dim}, {parity}"


if __name__ == "__main__":
    app()
