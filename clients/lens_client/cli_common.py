"""What every `lens` command shares: the app, option types, one-line errors, the client."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

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
# How a command reaches a server over TLS: added to every client command by `tls_options`,
# read by `connect`.
_TLS_OPTIONS = {
    "tls_ca": Annotated[
        Path | None,
        typer.Option(
            "--tls-ca",
            envvar="LENS_TLS_CA",
            show_default=False,
            help="PEM CA certificates to trust for the server's certificate; implies TLS.",
        ),
    ],
    "tls": Annotated[
        bool, typer.Option("--tls", help="TLS, trusting the system's CA certificates.")
    ],
    "tls_cert": Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            show_default=False,
            help="PEM client certificate, for a server that asks for one (mutual TLS); "
            "needs --tls-key.",
        ),
    ],
    "tls_key": Annotated[
        Path | None,
        typer.Option("--tls-key", show_default=False, help="PEM private key of --tls-cert."),
    ],
}
Command = TypeVar("Command", bound=Callable[..., Any])
# The TLS options of the command running, for `connect`.
_command_tls: ContextVar[dict[str, Any] | None] = ContextVar("command_tls", default=None)


def tls_options(command: Command) -> Command:
    """Gives a client command --tls-ca (LENS_TLS_CA), --tls, --tls-cert and --tls-key, which
    `connect` uses; the command itself does not see them. (A command called by another, as
    from Python, keeps the options of the one the user ran.)"""
    signature = inspect.signature(command, eval_str=True)
    added = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=False if name == "tls" else None,
            annotation=annotation,
        )
        for name, annotation in _TLS_OPTIONS.items()
    ]

    @functools.wraps(command)
    def with_tls(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in _TLS_OPTIONS if name in kwargs}
        if not given:
            return command(*args, **kwargs)
        token = _command_tls.set({k: v for k, v in given.items() if v is not None})
        try:
            return command(*args, **kwargs)
        finally:
            _command_tls.reset(token)

    with_tls.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *added]
    )
    with_tls.__annotations__ = {**command.__annotations__, **_TLS_OPTIONS}
    return with_tls  # type: ignore[return-value]


Repo = Annotated[Path, typer.Option("--repo", envvar="LENS_REPO", help="Model repository folder.")]
Model = Annotated[
    str | None, typer.Option("--model", help="NAME[:VERSION]; default: the server's default.")
]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"lens: {message}", err=True)
    raise typer.Exit(code)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@contextmanager
def connect(
    server: str,
    api_key: str | None = None,
    *,
    refused: Callable[[str], str] = str,
    **options: Any,
) -> Iterator[LensClient]:
    """A client whose refusals (and bad arguments) end the command with one line, the
    refusal's message as `refused` words it; over TLS where the command's TLS options say so."""
    from lens_client.client import LensClient

    try:
        with LensClient(server, api_key=api_key, **(_command_tls.get() or {}), **options) as client:
            yield client
    except (codec.LensClientError, ValueError) as e:
        fail(refused(str(e)))


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
