"""`lens serve --config FILE`: the command's options read from a TOML file, and
`--print-config`, which writes the effective options back as such a file.

The file's keys are the names of `serve()`'s parameters (snake_case: `http_port`,
`api_keys`, `rate_limit_rps`), found from the command's own parameters, so every option has a
key without being listed here. A value must have its option's TOML type (an integer for an
`int`, true or false for a flag, a string for a path, an array of strings for a repeatable
option) and then passes the option's own conversion, as the flag's text would. Relative paths
are taken from the file's folder. A comma-separated option (`compat`) also takes an array.

`[models.NAME]` tables give one model's towers batching of their own: any of BatchConfig's
fields (`max_batch_size`, `max_queue_delay_ms`, `max_queue_size`, `instances`), over the
global batching options for those they leave out.

Where a value comes from: a flag, over its `LENS_<OPTION>` environment variable, over the
file, over the default. The file's values reach click as the context's default map, the layer
click reads between the environment and the defaults, so click's parameter sources tell the
four apart.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import asdict, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import typer

from lens_server.config import BatchConfig, ServerConfig

# Options about the file itself, which have no key in it.
NOT_IN_FILE = frozenset({"config_file", "print_config"})
# Options holding a comma-separated list, which the file may also give as an array.
COMMA_LISTS = frozenset({"compat"})
MODELS = "models"
_META = "lens_server.settings.models"

# click's parameter sources (by name: typer carries its own copy of click).
_SOURCES = {
    "COMMANDLINE": "flag",
    "ENVIRONMENT": "environment",
    "DEFAULT_MAP": "file",
    "DEFAULT": "default",
}


def file_options(ctx: typer.Context) -> dict[str, Any]:
    """The command's options that the file may set, by file key (the parameter's name)."""
    return {
        p.name: p
        for p in ctx.command.params
        if p.param_type_name == "option" and p.name and p.expose_value and p.name not in NOT_IN_FILE
    }


def load(ctx: typer.Context, path: Path) -> None:
    """Reads the file at `path` into `ctx` (before click resolves the other options): its
    options as the default map, its model tables into `ctx.meta` (see `model_batch`).

    ValueError, naming the file and the line or key, for a file that cannot be used.
    """
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except OSError as e:
        raise ValueError(f"cannot read the config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    at = partial(_at, path, text)
    options = file_options(ctx)
    hints = _hints(ctx.command.callback)
    base = path.absolute().parent
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == MODELS:
            continue
        if key not in options:
            where = at(f"[{key}]") if isinstance(value, dict) else at(key)
            raise ValueError(f"{where}: {_unknown(key, value, options)}")
        annotation = hints.get(key)
        if (
            key in COMMA_LISTS
            and isinstance(value, list)
            and all(isinstance(v, str) for v in value)
        ):
            value = ",".join(value)
        if annotation is not None and not _fits(annotation, value):
            raise ValueError(
                f"{at(key)}: {key} must be {_describe(annotation)}, not {_toml_type(value)}"
            )
        if annotation is not None and _is_path(annotation):
            value = _relative_to(base, value)
        try:
            values[key] = options[key].process_value(ctx, value)
        except typer.BadParameter as e:
            raise ValueError(f"{at(key)}: {key}: {e.message}") from None
    ctx.default_map = {**(ctx.default_map or {}), **values}
    ctx.meta[_META] = _model_tables(at, data.get(MODELS, {}))


def model_batch(ctx: typer.Context, batch: BatchConfig) -> tuple[tuple[str, BatchConfig], ...]:
    """ServerConfig.model_batch from the file's `[models.NAME]` tables: each over `batch`.
    ValueError naming the table for batching that BatchConfig refuses."""
    configs = []
    for name, (where, table) in ctx.meta.get(_META, {}).items():
        try:
            configs.append((name, replace(batch, **table)))
        except ValueError as e:
            raise ValueError(f"{where}: [{MODELS}.{_key(name)}]: {e}") from None
    return tuple(configs)


def render(ctx: typer.Context, config: ServerConfig) -> str:
    """The effective options of `ctx` (a resolved `lens serve`) as a file `load` takes back,
    each line saying where its value came from. Keys given in LENS_API_KEYS are secrets: they
    are counted, never printed."""
    lines = [
        "# lens serve: the effective configuration (for --config).",
        "# After each value, where it came from: flag, environment, file or default.",
    ]
    for key in file_options(ctx):
        value = ctx.params.get(key)
        if value is None:
            lines.append(f"# {key}: not set")
            continue
        if key in COMMA_LISTS and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        source = ctx.get_parameter_source(key)
        where = _SOURCES.get(source.name, source.name.lower()) if source else "default"
        lines.append(f"{_key(key)} = {_toml(value)}  # {where}")
    if hidden := sum(k.source.startswith("LENS_API_KEYS") for k in config.api_keys.keys):
        lines.append(f"# and {hidden} API key(s) from LENS_API_KEYS, not printed")
    for name, batch in config.model_batch:
        lines += ["", f"[{MODELS}.{_key(name)}]"]
        lines += [f"{k} = {_toml(v)}" for k, v in asdict(batch).items()]
    return "\n".join(lines) + "\n"


def _model_tables(at: Callable[..., str], models: object) -> dict[str, tuple[str, dict[str, Any]]]:
    """The `[models.NAME]` tables, checked (BatchConfig's fields only, each of its type), by
    name: where each is in the file, and its keys."""
    if not isinstance(models, dict):
        raise ValueError(
            f"{at(MODELS)}: {MODELS} must be tables [{MODELS}.NAME], not {_toml_type(models)}"
        )
    hints = typing.get_type_hints(BatchConfig)
    known = [f.name for f in fields(BatchConfig)]
    tables = {}
    for name, table in models.items():
        where = f"[{MODELS}.{_key(name)}]"
        if not isinstance(table, dict):
            raise ValueError(f"{at(MODELS)}: {MODELS}.{_key(name)} must be a table {where}")
        for key, value in table.items():
            if key not in known:
                raise ValueError(
                    f"{at(key, where)}: unknown key {key!r} in {where}{_close(key, known)} "
                    f"(keys: {', '.join(known)})"
                )
            if not _fits(hints[key], value):
                raise ValueError(
                    f"{at(key, where)}: {where} {key} must be {_describe(hints[key])}, "
                    f"not {_toml_type(value)}"
                )
        tables[name] = at(where), table
    return tables


_HEADER = re.compile(r"\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


def _at(path: Path, text: str, key: str, table: str | None = None) -> str:
    """`path:LINE` of the line that sets `key` (in `table`, e.g. "[models.clip]", or else at
    the top level), or of the header `key` when it is one ("[tls]"); `path` where no line is
    found (a dotted or inline key)."""
    header = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if match := _HEADER.match(stripped):
            header = "[" + re.sub(r"\s*\.\s*", ".", match.group(1)) + "]"
            if header == key:
                return f"{path}:{number}"
        elif header == table and re.match(rf"""(["']?){re.escape(key)}\1\s*=""", stripped):
            return f"{path}:{number}"
    return str(path)


def _unknown(key: str, value: object, options: Iterable[str]) -> str:
    if isinstance(value, dict):
        return f"unknown table [{key}] (the only tables are [{MODELS}.NAME])"
    return (
        f"unknown key {key!r}{_close(key, options)}: the keys are the options of "
        "`lens serve --help` in snake_case"
    )


def _close(key: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _hints(callback: Callable[..., Any] | None) -> dict[str, Any]:
    """The Python types of the command function's parameters, where it can be found."""
    if callback is None:
        return {}
    try:
        return typing.get_type_hints(inspect.unwrap(callback))
    except (NameError, TypeError):
        return {}


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types of a union but None; `(annotation,)` for any other."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _fits(annotation: Any, value: object) -> bool:
    """Whether a TOML value has the type of a parameter of type `annotation`; types other
    than these are left to the option's own conversion."""
    checks: dict[Any, Callable[[object], bool]] = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        Path: lambda v: isinstance(v, str),
    }
    for member in _members(annotation):
        if typing.get_origin(member) is list:
            (item,) = typing.get_args(member)
            if isinstance(value, list) and all(_fits(item, v) for v in value):
                return True
        elif member not in checks or checks[member](value):
            return True
    return False


def _describe(annotation: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    names[Path] = "a path (a string)"
    said = []
    for member in _members(annotation):
        if typing.get_origin(member) is list:
            (item,) = typing.get_args(member)
            said.append(f"an array of {names.get(item, 'values').split(' ', 1)[-1]}s")
        else:
            said.append(names.get(member, getattr(member, "__name__", str(member))))
    return " or ".join(said)


def _toml_type(value: object) -> str:
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ]
    for kind, name in kinds:
        if isinstance(value, kind):
            return f"{name} ({_toml(value)})" if kind not in (list, dict) else name
    return "a date or time"


def _is_path(annotation: Any) -> bool:
    members = _members(annotation)
    items = [typing.get_args(m)[0] for m in members if typing.get_origin(m) is list]
    return Path in members or Path in items


def _relative_to(base: Path, value: object) -> object:
    if isinstance(value, list):
        return [_relative_to(base, v) for v in value]
    assert isinstance(value, str)
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _string(text: str) -> str:
    """A TOML basic string (escapes for quotes, backslashes and control characters)."""
    escaped = (
        f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else "\\" + c if c in '"\\' else c
        for c in text
    )
    return '"' + "".join(escaped) + '"'


def _toml(value: object) -> str:
    """A TOML value; paths are written absolute, so the file means them from any folder."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, Path):
        return _string(str(value.absolute()))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")
