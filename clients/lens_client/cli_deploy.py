"""`lens models ...`, `lens deploy`, `lens rollback`: what the server serves, and changing it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lens_client import codec
from lens_client.cli_common import ApiKey, Server, app, connect, fail, models_app, tls_options

if TYPE_CHECKING:
    from lens_client.client import LensClient

KeepCollections = Annotated[
    bool,
    typer.Option(
        "--keep-collections",
        help="Leave the collections on the previous version (it stays loaded for them) "
        "instead of re-indexing them with the new one.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@models_app.callback(invoke_without_command=True)
@tls_options
def models(
    ctx: typer.Context,
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """List the server's models and their versions (as `lens models ls`)."""
    if ctx.invoked_subcommand is None:
        models_ls(None, server, api_key, as_json)


@models_app.command("ls")
@tls_options
def models_ls(
    name: Annotated[str | None, typer.Argument(help="One model; default: all.")] = None,
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """List the server's models and their versions, with their state."""
    with connect(server, api_key=api_key) as client:
        found = [client.get_model(name)] if name else client.models()
    _print_models(found, as_json)


@models_app.command("load")
@tls_options
def models_load(
    model: Annotated[str, typer.Argument(help="NAME[:VERSION]; default version: the newest.")],
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Load and warm up a version beside the loaded ones (requests naming it get it)."""
    with connect(server, api_key=api_key) as client:
        _print_models([client.load_model(model)], False)


@models_app.command("unload")
@tls_options
def models_unload(
    model: Annotated[str, typer.Argument(help="NAME:VERSION, or NAME for every version.")],
    server: Server = codec.DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Unload a version once its requests in flight have finished."""
    with connect(server, api_key=api_key) as client:
        _print_models([client.unload_model(model)], False)


@models_app.command("reload")
@tls_options
def models_reload(
    server: Server = codec.DEFAULT_SERVER, api_key: ApiKey = None, as_json: AsJson = False
) -> None:
    """Have the server read its repository now (new models and versions, changed files)."""
    with connect(server, api_key=api_key) as client:
        _print_models(client.reload_models(), as_json)


Servers = Annotated[
    str | None,
    typer.Option(
        "--servers",
        show_default=False,
        help="Replicas HOST:PORT,HOST:PORT,...: deploy to each in turn, each serving the new "
        "version before the next is asked (a rolling deploy); stops at the first that fails.",
    ),
]


@app.command()
@tls_options
def deploy(
    name: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[int, typer.Argument(help="The version to serve; 0: the newest.")] = 0,
    keep_collections: KeepCollections = False,
    server: Server = codec.DEFAULT_SERVER,
    servers: Servers = None,
    api_key: ApiKey = None,
) -> None:
    """Serve another version of a model with no failed request; collections follow."""
    _roll(
        servers or server,
        api_key,
        lambda client: client.deploy(name, version, keep_collections=keep_collections),
        name,
        keep_collections,
    )


@app.command()
@tls_options
def rollback(
    name: Annotated[str, typer.Argument(help="The model.")],
    keep_collections: KeepCollections = False,
    server: Server = codec.DEFAULT_SERVER,
    servers: Servers = None,
    api_key: ApiKey = None,
) -> None:
    """Serve again the version that served before the current one."""
    _roll(
        servers or server,
        api_key,
        lambda client: client.rollback(name, keep_collections=keep_collections),
        name,
        keep_collections,
    )


def _roll(
    servers: str,
    api_key: str | None,
    first: Callable[[LensClient], dict[str, Any]],
    name: str,
    keep_collections: bool,
) -> None:
    """`first` on the first replica, then the version it chose deployed on each other one in
    turn, so that every replica ends on the same version (a replica's "newest" or "previous"
    is not asked again). Each call returns once that replica serves the version."""
    try:
        replicas = codec.replicas(servers)
    except ValueError as e:
        fail(str(e), 2)
    version, done = 0, list[str]()
    for i, address in enumerate(replicas):
        label = f"{address}: " if len(replicas) > 1 else ""
        moved = f"; {', '.join(done)} already on version {version}" if done else ""
        left = f"; not asked: {', '.join(replicas[i + 1 :])}" if i + 1 < len(replicas) else ""

        def refused(message: str, label: str = label, after: str = moved + left) -> str:
            return f"{label}{message}{after}"

        with connect(address, api_key=api_key, timeout=600, refused=refused) as client:
            if done:
                result = client.deploy(name, version, keep_collections=keep_collections)
            else:
                result = first(client)
        version = result["version"]
        done.append(address)
        _print_deploy(result, label)


def _print_deploy(result: dict[str, Any], label: str = "") -> None:
    load = f"loaded in {result['load_seconds']:.2f} s, " if result["load_seconds"] else ""
    typer.echo(
        f"{label}{result['model']}: version {result['version']} serving "
        f"(was {result['previous_version'] or 'none'}; {load}"
        f"switched in {1000 * result['swap_seconds']:.2f} ms)"
    )
    for name in result["reindexing"]:
        typer.echo(f"  collection {name}: re-indexing (lens index describe {name})")


def _print_models(found: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    for model in found:
        default = " (default)" if model["default"] else ""
        previous = model["previous_version"]
        typer.echo(
            f"{model['name']}{default}: {model['kind']}, dim {model['dim']}, "
            f"{'+'.join(model['modalities'])}, serving version {model['serving_version']}"
            + (f" (rollback to {previous})" if previous else "")
        )
        for v in model["versions"]:
            reason = f": {v['reason']}" if v["reason"] else ""
            on = f" on {', '.join(v['providers'])}" if v["providers"] else ""
            held = f", {v['memory_bytes'] / 2**20:.1f} MiB" if v["memory_bytes"] else ""
            typer.echo(f"  version {v['version']}: {v['state']}{on}{held}  [{v['source']}]{reason}")
            for modality, runtime in v["runtimes"].items():
                trials = "; ".join(
                    _trial(t) for t in runtime["trials"] if len(runtime["trials"]) > 1
                )
                typer.echo(
                    f"    {modality}: {runtime['runtime']}" + (f" ({trials})" if trials else "")
                )


def _trial(t: dict[str, Any]) -> str:
    if t["error"]:
        return f"{t['runtime']}: {t['error']}"
    return f"{t['runtime']} {t['items_per_second']:,.0f}/s, cosine {t['min_cosine']:.5f}"
