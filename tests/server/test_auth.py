"""API keys and scopes on both front doors, against real servers: gRPC through the stubs and
lens_client, HTTP through httpx and the OpenAI SDK's `api_key`. One keyed server serves the
whole module; the session's open server shows that no keys means open."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import grpc
import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from lens.v1 import (
    classifiers_pb2,
    index_pb2,
    index_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from starlette.routing import BaseRoute, Route

from lens_client.aio import AsyncLensClient
from lens_client.client import LensClient
from lens_client.codec import LensClientError
from lens_server.access import scopes
from lens_server.access.keys import ApiKeys, KeyListError, parse
from lens_server.http.app import build_app
from tests.conftest import LENS, ServerProcess

EMBED_KEY = "embed-key-0123"
WRITE_KEY = "write-key-4567"  # stored as its sha256 digest
ADMIN_KEY = "admin-key-89ab"
ALL_KEY = "all-key-cdef"
ENV_KEY = "env-key-from-LENS_API_KEYS"
WRONG_KEY = "not-a-key-of-this-server"

KEYS_FILE = f"""\
# who: scopes
{EMBED_KEY} embed

sha256:{hashlib.sha256(WRITE_KEY.encode()).hexdigest()} write
{ADMIN_KEY} admin   # the operators
{ALL_KEY} embed,write,admin
"""


@pytest.fixture(scope="module")
def keyed(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(KEYS_FILE)
    with mock.patch.dict(os.environ, {"LENS_API_KEYS": f"{ENV_KEY} embed; other-env-key write"}):
        server = ServerProcess(tiny_repo, "--api-keys", str(path))
    yield server
    server.stop()


def _metadata(key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),) if key else ()


def _grpc_code(call, request, key: str | None) -> grpc.StatusCode:
    try:
        call(request, metadata=_metadata(key), timeout=30)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def stubs(keyed: ServerProcess) -> Iterator[dict]:
    with grpc.insecure_channel(keyed.address) as channel:
        yield {
            "embed": inference_pb2_grpc.InferenceStub(channel).Embed,
            "create": index_pb2_grpc.IndexStub(channel).CreateCollection,
            "drop": index_pb2_grpc.IndexStub(channel).DropCollection,
            "reload": models_pb2_grpc.ModelsStub(channel).ReloadRepository,
            "health": health_pb2_grpc.HealthStub(channel).Check,
        }


TEXT = inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text="a cat")])


def test_startup_says_whether_keys_are_required(keyed: ServerProcess, server: ServerProcess):
    said = "access: 6 API key(s) required (3 embed, 3 write, 2 admin)"
    assert any(said in line for line in keyed.log)
    (line,) = [ln for ln in server.log if ln.startswith("access:")]
    assert "open: no API keys" in line


# -- gRPC ----------------------------------------------------------------------------------


def test_grpc_each_scope_allowed_and_refused(stubs):
    assert _grpc_code(stubs["embed"], TEXT, EMBED_KEY) == grpc.StatusCode.OK
    assert _grpc_code(stubs["embed"], TEXT, ENV_KEY) == grpc.StatusCode.OK  # LENS_API_KEYS
    create = index_pb2.CreateCollectionRequest(name="grpc-scopes")
    assert _grpc_code(stubs["create"], create, WRITE_KEY) == grpc.StatusCode.OK  # sha256: form
    drop = index_pb2.CollectionRequest(name="grpc-scopes")
    assert _grpc_code(stubs["drop"], drop, ADMIN_KEY) == grpc.StatusCode.OK
    reload = models_pb2.ReloadRepositoryRequest()
    assert _grpc_code(stubs["reload"], reload, ALL_KEY) == grpc.StatusCode.OK
    for call, request, key, scope in [
        (stubs["embed"], TEXT, WRITE_KEY, "embed"),
        (stubs["create"], create, EMBED_KEY, "write"),
        (stubs["drop"], drop, WRITE_KEY, "admin"),
        (stubs["reload"], reload, EMBED_KEY, "admin"),
    ]:
        with pytest.raises(grpc.RpcError) as refused:
            call(request, metadata=_metadata(key), timeout=30)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"needs the '{scope}' scope" in refused.value.details()


@pytest.mark.parametrize("key", [None, WRONG_KEY])
def test_grpc_missing_or_wrong_key_is_unauthenticated(stubs, key):
    with pytest.raises(grpc.RpcError) as refused:
        stubs["embed"](TEXT, metadata=_metadata(key), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert WRONG_KEY not in refused.value.details()


def test_grpc_malformed_authorization_is_unauthenticated(stubs):
    metadata = (("authorization", f"Basic {EMBED_KEY}"),)
    with pytest.raises(grpc.RpcError) as refused:
        stubs["embed"](TEXT, metadata=metadata, timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in refused.value.details()


def test_grpc_health_is_open(stubs):
    answer = stubs["health"](health_pb2.HealthCheckRequest(), timeout=30)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_lens_client_sends_its_api_key(keyed: ServerProcess, monkeypatch):
    with LensClient(keyed.address, api_key=EMBED_KEY) as lens:
        assert lens.embed_texts(["a cat"]).shape == (1, 32)
        assert lens.healthy()
    monkeypatch.setenv("LENS_API_KEY", EMBED_KEY)
    with LensClient(keyed.address) as lens:
        assert [m["name"] for m in lens.models()] == ["tiny"]
    monkeypatch.delenv("LENS_API_KEY")
    with LensClient(keyed.address, retries=0) as lens, pytest.raises(LensClientError) as refused:
        lens.models()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    with LensClient(keyed.address, api_key=EMBED_KEY) as lens:
        with pytest.raises(LensClientError) as refused:
            lens.reload_models()
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    with LensClient(keyed.address, api_key=WRITE_KEY) as lens:
        with pytest.raises(LensClientError) as refused:  # a stream (EmbedStream) too
            lens.embed_texts(["a", "b"], batch_size=1)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_asyncio_client_sends_its_api_key(keyed: ServerProcess):
    async def run() -> None:
        async with AsyncLensClient(keyed.address, api_key=EMBED_KEY) as lens:
            vectors = await lens.embed_texts(["a", "b", "c"], batch_size=1)  # EmbedStream
            assert vectors.shape == (3, 32)
        async with AsyncLensClient(keyed.address, api_key=WRONG_KEY, retries=0) as lens:
            with pytest.raises(LensClientError) as refused:
                await lens.models()
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(run())


def test_cli_takes_api_key(keyed: ServerProcess):
    env = {k: v for k, v in os.environ.items() if k != "LENS_API_KEY"}
    ls = [str(LENS), "index", "ls", "--server", keyed.address]
    refused = subprocess.run(ls, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "UNAUTHENTICATED" in refused.stderr
    by_flag = [*ls, "--api-key", EMBED_KEY]
    assert subprocess.run(by_flag, capture_output=True, env=env, timeout=60).returncode == 0
    by_env = {**env, "LENS_API_KEY": EMBED_KEY}
    assert subprocess.run(ls, capture_output=True, env=by_env, timeout=60).returncode == 0


# -- HTTP ----------------------------------------------------------------------------------


def _http(keyed: ServerProcess, method: str, path: str, key: str | None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{keyed.http}{path}", headers=headers, timeout=30, **kw)


def test_http_each_scope_allowed_and_refused(keyed: ServerProcess):
    body = {"inputs": [{"text": "a cat"}]}
    assert _http(keyed, "POST", "/v1/embed", EMBED_KEY, json=body).status_code == 200
    create = {"name": "http-scopes"}
    assert _http(keyed, "POST", "/v1/collections", WRITE_KEY, json=create).status_code == 201
    assert _http(keyed, "DELETE", "/v1/collections/http-scopes", ADMIN_KEY).status_code == 200
    assert _http(keyed, "POST", "/v1/repository/reload", ALL_KEY).status_code == 200
    for method, path, key, scope, kw in [
        ("POST", "/v1/embed", ADMIN_KEY, "embed", {"json": body}),
        ("GET", "/v1/models", WRITE_KEY, "embed", {}),
        ("POST", "/v1/collections", EMBED_KEY, "write", {"json": create}),
        ("DELETE", "/v1/collections/http-scopes", WRITE_KEY, "admin", {}),
        ("POST", "/v1/models/tiny/deploy", EMBED_KEY, "admin", {"json": {}}),
    ]:
        answer = _http(keyed, method, path, key, **kw)
        assert answer.status_code == 403, (method, path)
        error = answer.json()["error"]
        assert error["type"] == "permission_error" and error["code"] == 403
        assert f"needs the '{scope}' scope" in error["message"]


def test_http_an_item_id_with_slashes_takes_its_routes_scope(keyed: ServerProcess):
    """The thumbnail route's id may hold slashes (`{item:path}`): the gate finds its scope
    for such a path too, and the route answers it."""
    for path in (
        "/v1/collections/nope/items/a%2Fb/thumbnail",
        "/v1/collections/nope/items/a/b/thumbnail",
    ):
        refused = _http(keyed, "GET", path, WRITE_KEY)
        assert refused.status_code == 403 and "needs the 'embed' scope" in refused.text, path
        answered = _http(keyed, "GET", path, EMBED_KEY)
        assert answered.status_code == 404 and "collection 'nope' not found" in answered.text


@pytest.mark.parametrize("key", [None, WRONG_KEY])
def test_http_missing_or_wrong_key_is_401(keyed: ServerProcess, key):
    answer = _http(keyed, "POST", "/v1/embed", key, json={"inputs": [{"text": "a"}]})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["error"]["type"] == "authentication_error"
    assert WRONG_KEY not in answer.text


def test_http_checks_the_key_before_the_body(keyed: ServerProcess):
    # A body of a type no route takes gets 401, not 415: the key comes first.
    answer = httpx.post(
        f"{keyed.http}/v1/embed", content=b"x" * 1024, headers={"content-type": "text/plain"}
    )
    assert answer.status_code == 401


@pytest.mark.parametrize(
    "path", ["/health", "/health/live", "/health/ready", "/openapi.json", "/docs"]
)
def test_http_health_and_schema_are_open(keyed: ServerProcess, path):
    assert _http(keyed, "GET", path, None).status_code == 200


def test_openai_sdk_api_key(keyed: ServerProcess):
    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{keyed.http}/v1", api_key=key, max_retries=0)

    result = client(EMBED_KEY).embeddings.create(model="tiny", input=["a cat"])
    assert len(result.data[0].embedding) == 32
    with pytest.raises(openai.AuthenticationError):
        client(WRONG_KEY).embeddings.create(model="tiny", input=["a cat"])
    with pytest.raises(openai.PermissionDeniedError, match="'embed' scope"):
        client(WRITE_KEY).embeddings.create(model="tiny", input=["a cat"])


def test_no_keys_is_open(server: ServerProcess):
    assert server.http
    answer = httpx.post(f"{server.http}/v1/embed", json={"inputs": [{"text": "a"}]}, timeout=30)
    assert answer.status_code == 200
    with grpc.insecure_channel(server.address) as channel:
        reply = models_pb2_grpc.ModelsStub(channel).ListModels(models_pb2.ListModelsRequest())
    assert [m.name for m in reply.models] == ["tiny"]


# -- the key list ---------------------------------------------------------------------------


def test_bad_keys_file_stops_startup_with_one_line(tiny_repo: Path, tmp_path: Path):
    path = tmp_path / "keys.txt"
    path.write_text("good-key embed\nsecret-key embed,deploy\n")
    result = subprocess.run(
        [str(LENS), "serve", "--repo", str(tiny_repo), "--port", "0", "--api-keys", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr == f"lens: {path}:2: unknown scope 'deploy' (scopes: embed, write, admin)\n"
    )
    assert "lens serving" not in result.stdout


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("lonely-key\n", "keys.txt:1: expected 'KEY SCOPE[,SCOPE...]'"),
        ("sha256:abc embed\n", "keys.txt:1: a sha256: key needs 64 hex digits"),
        ("same-key embed\nsame-key write\n", "keys.txt:2: the same key as keys.txt:1"),
        ("a-key ,\n", "keys.txt:1: no scope"),
    ],
)
def test_bad_key_lists_are_refused_naming_the_line(text, said):
    with pytest.raises(KeyListError) as refused:
        ApiKeys(tuple(parse(text.splitlines(), "keys.txt")))
    assert str(refused.value).startswith(said)
    assert "-key" not in str(refused.value)


def test_key_lists_take_comments_digests_and_env_entries(tmp_path: Path):
    path = tmp_path / "keys.txt"
    digest = hashlib.sha256(b"hashed").hexdigest()
    path.write_text(f"# a comment\n\n  plain embed,write  # who\nsha256:{digest.upper()} admin\n")
    keys = ApiKeys.read(path, "env-one embed; ;env-two admin")
    assert [(k.source.rsplit("/", 1)[-1], sorted(k.scopes)) for k in keys.keys] == [
        ("keys.txt:3", ["embed", "write"]),
        ("keys.txt:4", ["admin"]),
        ("LENS_API_KEYS entry 1", ["embed"]),
        ("LENS_API_KEYS entry 3", ["admin"]),
    ]
    assert keys.authenticate("hashed").source.endswith("keys.txt:4")
    assert keys.authenticate("env-two").source == "LENS_API_KEYS entry 3"
    assert "plain" not in repr(keys)


# -- the table ------------------------------------------------------------------------------


def test_every_grpc_method_has_a_scope():
    services = [
        inference_pb2.DESCRIPTOR.services_by_name["Inference"],
        models_pb2.DESCRIPTOR.services_by_name["Models"],
        index_pb2.DESCRIPTOR.services_by_name["Index"],
        classifiers_pb2.DESCRIPTOR.services_by_name["Classifiers"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]
    methods = {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}
    assert methods - set(scopes.GRPC) == set()
    assert {m for m in methods if m.startswith("/lens.v1.")} == {
        m for m in scopes.GRPC if m.startswith("/lens.v1.")
    }


def test_every_grpc_method_served_has_a_scope(keyed: ServerProcess):
    """What the running server answers, read through its (open) reflection service."""

    def served() -> set[str]:
        with grpc.insecure_channel(keyed.address) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            pool = DescriptorPool(database)
            return {
                f"/{name}/{method.name}"
                for name in database.get_services()
                for method in pool.FindServiceByName(name).methods
            }

    try:
        methods = served()
    except grpc.RpcError as e:  # the reflection client's one stream, cut once in CI
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e
        methods = served()
    assert {"/lens.v1.Inference/Embed", "/grpc.health.v1.Health/Check"} <= methods
    assert methods - set(scopes.GRPC) == set()


def _routes(routes: list) -> Iterator[BaseRoute]:
    """One by one: FastAPI keeps an included router's routes behind one entry."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from _routes(inner.routes) if inner is not None else [route]


def test_every_http_route_has_a_scope():
    every_api = ("kserve", "immich", "weaviate")
    app = build_app(None, lambda: "", 1 << 20, compat=every_api)  # type: ignore[arg-type]
    while not isinstance(app, FastAPI):
        app = app.app
    found = list(_routes(app.routes))
    assert sum(isinstance(r, APIRoute) for r in found) > 20
    routes = {
        (method, route.path)
        for route in found
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    # The schema has each route's full path (with any router prefix), its parameters
    # without their converters (`{item}` for `{item:path}`).
    schema = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert schema <= {(m, p.replace(":path}", "}")) for m, p in routes}
    assert routes - set(scopes.HTTP) == set()


def test_keys_are_never_logged(keyed: ServerProcess):
    """Last in the module: stops the server to read all it wrote."""
    keyed.stop()
    assert keyed.process.stdout is not None
    written = "".join(keyed.log) + keyed.process.stdout.read()
    assert "needs the 'admin' scope" in written or "PERMISSION_DENIED" in written
    for key in (EMBED_KEY, WRITE_KEY, ADMIN_KEY, ALL_KEY, ENV_KEY, WRONG_KEY):
        assert key not in written
