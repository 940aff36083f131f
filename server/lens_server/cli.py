"""`lens serve`: the server's command, registered on the `lens` app by its entry point."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from lens_client.cli_common import Repo, fail, parse_bytes


def register(app: typer.Typer) -> None:
    # Every option without a variable of its own reads LENS_<OPTION> (LENS_HTTP_PORT).
    app.command(context_settings={"auto_envvar_prefix": "LENS"})(serve)


def _read_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """Reads --config before the other options resolve, so that it sits under them."""
    from lens_server import settings

    if value is not None:
        try:
            settings.load(ctx, value)
        except ValueError as e:
            fail(str(e), 2)
    return value


def serve(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="LENS_CONFIG",
            is_eager=True,
            callback=_read_config,
            help="TOML file of these options, keys in snake_case (http_port = 8080; paths "
            "from the file's folder), and batching per model in tables models.NAME; flags and "
            "LENS_<OPTION> variables override it.",
        ),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config", help="Print the effective options as a --config file and exit."
        ),
    ] = False,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gRPC port to listen on (0: any free port).")] = 50051,
    http_port: Annotated[
        int,
        typer.Option(help="HTTP/JSON port on the same host (0: any free port, -1: no HTTP)."),
    ] = 8080,
    no_http: Annotated[bool, typer.Option("--no-http", help="Serve gRPC only.")] = False,
    metrics_port: Annotated[
        int,
        typer.Option(
            help="Serve Prometheus metrics on this port of their own (0: any free port) "
            "instead of at /metrics on the HTTP port (-1)."
        ),
    ] = -1,
    no_metrics: Annotated[
        bool, typer.Option("--no-metrics", help="Record and serve no metrics.")
    ] = False,
    allow_url_fetch: Annotated[
        bool,
        typer.Option(help="Let image inputs be http(s) URLs the server fetches (public only)."),
    ] = False,
    repo: Repo = Path("models"),
    collections: Annotated[
        Path, typer.Option(envvar="LENS_COLLECTIONS", help="Folder of the collections.")
    ] = Path("collections"),
    milvus_uri: Annotated[
        str,
        typer.Option(
            envvar="LENS_MILVUS_URI",
            help="Milvus for collections created with --backend milvus (http://host:19530).",
        ),
    ] = "",
    pg_dsn: Annotated[
        str,
        typer.Option(
            envvar="LENS_PG_DSN",
            help="PostgreSQL with pgvector for collections created with --backend pgvector "
            "(postgresql://user@host:port/db).",
        ),
    ] = "",
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
    instances: Annotated[
        int,
        typer.Option(
            help="Batches run at once per tower (a tower whose images are decoded on the GPU "
            "runs at least 2: one batch decodes while another embeds)."
        ),
    ] = 1,
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
    api_keys: Annotated[
        Path | None,
        typer.Option(
            envvar="LENS_API_KEYS_FILE",
            allow_from_autoenv=False,  # LENS_API_KEYS holds keys, not a file's name
            help="File of API keys, one 'KEY SCOPE[,SCOPE...]' a line (KEY or sha256:HEX; "
            "scopes embed, write, admin); LENS_API_KEYS adds entries separated by ';'. "
            "No keys: every call is open.",
        ),
    ] = None,
    rate_limit_rps: Annotated[
        float, typer.Option(help="Requests a second per API key (or client address); 0: off.")
    ] = 0,
    rate_limit_inputs: Annotated[
        float, typer.Option(help="Inputs a second per API key (or client address); 0: off.")
    ] = 0,
    max_in_flight_per_client: Annotated[
        int, typer.Option(help="Requests at once per API key (or client address); 0: off.")
    ] = 0,
    compat: Annotated[
        str,
        typer.Option(
            help="Other apps' APIs to serve on the HTTP port, comma-separated: kserve (KServe "
            "v2, on the gRPC port too), immich (Immich's machine learning: "
            "IMMICH_MACHINE_LEARNING_URL=http://HOST:PORT), weaviate (multi2vec-clip: "
            "CLIP_INFERENCE_API=http://HOST:PORT); '' for none."
        ),
    ] = "kserve",
    alias: Annotated[
        list[str] | None,
        typer.Option(
            help="ALIAS=MODEL[:VERSION]: a name another app gives a model, e.g. Immich's "
            "ViT-B-32__openai=clip. Repeatable."
        ),
    ] = None,
    weaviate_model: Annotated[
        str,
        typer.Option(help="Model (NAME[:VERSION]) of the Weaviate routes; default: the default."),
    ] = "",
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="PEM certificate (chain) for TLS on every port; needs --tls-key."),
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="PEM CA certificates: clients must present a certificate it signed."),
    ] = None,
    drain_delay: Annotated[
        float,
        typer.Option(
            help="Seconds between a SIGTERM (health turns NOT_SERVING) and the ports closing."
        ),
    ] = 2.0,
    grace_s: Annotated[
        float, typer.Option(help="Seconds calls in flight get to finish at shutdown.")
    ] = 30.0,
    log_format: Annotated[str, typer.Option(help="Request log lines as text or json.")] = "text",
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve the models of a repository over gRPC and HTTP/JSON.

    Other apps use lens through --compat (docs/compat.md).

    Immich (smart search): lens serve --host 0.0.0.0 --compat immich
    --alias ViT-B-32__openai=MODEL (a MODEL of the dimension Immich gives
    that name), and in the Immich server's environment
    IMMICH_MACHINE_LEARNING_URL=http://lens:8080.

    Weaviate (multi2vec-clip): lens serve --host 0.0.0.0 --compat weaviate,
    and in Weaviate's docker-compose environment
    ENABLE_MODULES=multi2vec-clip and CLIP_INFERENCE_API=http://lens:8080.
    """
    import asyncio

    from lens_server import settings
    from lens_server.access.keys import ApiKeys, KeyListError
    from lens_server.config import (
        BatchConfig,
        ClientLimits,
        Limits,
        RuntimeConfig,
        ServerConfig,
        parse_aliases,
    )
    from lens_server.errors import LensError
    from lens_server.gpu import cuda_available
    from lens_server.logs import setup as setup_logging
    from lens_server.tls import from_options, load_tls

    try:
        setup_logging(log_level, log_format)
    except ValueError as e:
        fail(str(e), 2)
    try:  # a key list the server cannot use stops it before it listens, with exit code 2
        # --print-config reads none of the files the options name (they may be secrets
        # mounted only where the server runs).
        keys = ApiKeys.read(None if print_config else api_keys, os.environ.get("LENS_API_KEYS"))
    except KeyListError as e:
        fail(str(e), 2)
    try:  # so do TLS files it cannot use, and TLS options given by halves
        tls = from_options(tls_cert, tls_key, tls_client_ca)
        if tls and not print_config:
            load_tls(tls)
    except ValueError as e:
        fail(str(e), 2)
    try:
        runtime = RuntimeConfig(
            engine=runtime_engine, image_decode=image_decode, intra_op_threads=threads
        )
        if decode_workers is not None:
            runtime = replace(runtime, decode_workers=decode_workers)
        batch = BatchConfig(
            max_batch_size or (256 if cuda_available() else 32),
            max_queue_delay_ms,
            max_queue_size,
            instances,
        )
        config = ServerConfig(
            repo=repo,
            collections=collections,
            milvus_uri=milvus_uri,
            pg_dsn=pg_dsn,
            host=host,
            port=port,
            http_port=-1 if no_http else http_port,
            metrics=not no_metrics,
            metrics_port=metrics_port,
            allow_url_fetch=allow_url_fetch,
            default_model=default_model,
            batch=batch,
            model_batch=settings.model_batch(ctx, batch),
            limits=Limits(max_inputs_per_request=max_inputs, max_labels=max_labels),
            runtime=runtime,
            memory_budget_bytes=parse_bytes(memory_budget),
            poll_s=poll_s,
            api_keys=keys,
            client_limits=ClientLimits(rate_limit_rps, rate_limit_inputs, max_in_flight_per_client),
            compat=tuple(name.strip() for name in compat.split(",") if name.strip()),
            aliases=parse_aliases(alias or []),
            weaviate_model=weaviate_model,
            drain_delay_s=drain_delay,
            grace_s=grace_s,
            tls=tls,
            log_format=log_format,
        )
    except ValueError as e:  # options the server cannot use: exit code 2, before it listens
        fail(str(e), 2)
    if print_config:
        typer.echo(settings.render(ctx, config), nl=False)
        return
    from lens_server.app import serve as run

    try:
        asyncio.run(run(config))
    except (ValueError, LensError, OSError) as e:
        fail(str(e))
