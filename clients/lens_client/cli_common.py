"""What every `lens` command shares: the app, option types, one-line errors, the client."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from lens_client import codec

if TYPE_CHECKING:
    from lens_client.client import LensClient

app = typer.Typer(
    name="lens",
    no_args_is_help=True,
    add_completion=False,
    help="lens: image and text embeddings over gRPC, and the models behind them.",
)
index_app = typer.Typer(no_args_is_help=True, help="Collections of images, texts and vectors.")
app.add_typer(index_app, name="index")
classifier_app = typer.Typer(no_args_is_help=True, help="Saved zero-shot and few-shot classifiers.")
app.add_typer(classifier_app, name="classifier")
models_app = typer.Typer(
    help="The server's models and versions: list (the default), load, unload, reload."
)
app.add_typer(models_app, name="models")

Server = Annotated[
    str, typer.Option("--server", envvar="LENS_SERVER", help="Server address HOST:PORT.")
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LENS_API_KEY",
        show_default=False,
        help="API key, for a server that requires one (LENS_API_KEY keeps it out of `ps`).",
    ),
]
Repo = Annotated[Path, typer.Option("--repo", envvar="LENS_REPO", help="Model repository folder.")]
Model = Annotated[
    str | None, typer.Option("--model", help="NAME[:VERSION]; default: the server's default.")
]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"lens: {message}", err=True)
    raise typer.Exit(code)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@contextmanager
def connect(server: str, api_key: str | None = None, **options: Any) -> Iterator[LensClient]:
    """A client whose refusals (and bad arguments) end the command with one line."""
    from lens_client.client import LensClient

    try:
        with LensClient(server, api_key=api_key, **options) as client:
            yield client
    except (codec.LensClientError, ValueError) as e:
        fail(str(e))


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_bytes(text: str) -> int:
    """`"8GiB"`, `"512MB"`, `"1e9"`, `"0"` → bytes (KiB, MiB, GiB: powers of 1024)."""
    raw = text.strip().lower().removesuffix("b")
    binary = raw.endswith("i")
    raw = raw.removesuffix("i")
    unit = raw[-1] if raw and raw[-1] in "kmgt" else ""
    try:
        number = float(raw.removesuffix(unit) if unit else raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 8GiB, 512MB, 0)") from None
    scale = 1024 ** "kmgt".index(unit) * 1024 if binary and unit else _UNITS[unit]
    return int(number * scale)


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")


def image_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            fail(f"{path}: no such file or folder", 2)
    return files
