"""Other apps' APIs (`lens serve --compat`): Immich's machine-learning service and Weaviate's
multi2vec-clip inference container, called as those apps call them, against gRPC `Embed`;
their errors in each app's own shape; the routes absent unless enabled.

The requests are built as the apps build them (docs/compat.md gives the versions):
- Immich: server/src/repositories/machine-learning.repository.ts `getFormData` appends
  `entries` as `JSON.stringify(config)` (compact JSON), then the image as
  `new Blob([fileBuffer])` (a file part named "blob", application/octet-stream) or the
  text as a plain field; `encodeImage` / `encodeText` build the entries
  (`{clip: {visual: {modelName}}}`, `{clip: {textual: {modelName, options: {language}}}}`)
  and read back `response['clip']`.
- Weaviate: modules/multi2vec-clip/clients/vectorizer.go `Vectorize` POSTs
  `json.Marshal(vecRequest{Texts, Images})` (compact JSON, no Content-Type header) and
  reads `textVectors`, `imageVectors` and `error`; vectorizer/vectorizer.go sends `[]` for
  the kind it has none of, startup.go polls `/.well-known/ready` until a 2xx.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from lens.v1 import inference_pb2, inference_pb2_grpc
from PIL import Image

from lens_server.http.app import build_app
from lens_server.vectors import cosine_rows
from tests.conftest import LENS, ServerProcess

IMMICH_MODEL = "ViT-B-32__openai"
MAX_INPUTS = 8


def _jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def compat(tiny_repo: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tiny_repo,
        "--compat",
        "kserve,immich,weaviate",
        "--alias",
        f"{IMMICH_MODEL}=tiny",
        "--alias",
        "pinned=tiny:1",
        "--max-inputs",
        str(MAX_INPUTS),
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(compat: ServerProcess) -> Iterator[httpx.Client]:
    assert compat.http
    with httpx.Client(base_url=compat.http, timeout=30) as client:
        yield client


def _grpc(server: ServerProcess, inputs: list[inference_pb2.Input]) -> np.ndarray:
    with grpc.insecure_channel(server.address) as channel:
        response = inference_pb2_grpc.InferenceStub(channel).Embed(
            inference_pb2.EmbedRequest(inputs=inputs), timeout=30
        )
    m = response.embeddings
    return np.frombuffer(m.data, "<f4").reshape(m.rows, m.cols)


# --- Immich -------------------------------------------------------------------------------


def _immich(
    client: httpx.Client,
    entries: object,
    image: bytes | None = None,
    text: str | None = None,
) -> httpx.Response:
    """POST /predict as Immich's getFormData builds it: a multipart body (Node's FormData)
    of `entries`, then an `image` file part or a `text` field."""
    raw = entries if isinstance(entries, str) else json.dumps(entries, separators=(",", ":"))
    parts: list[tuple[str, tuple[str | None, bytes | str] | tuple[str, bytes, str]]] = [
        ("entries", (None, raw))
    ]
    if image is not None:
        parts.append(("image", ("blob", image, "application/octet-stream")))
    if text is not None:
        parts.append(("text", (None, text)))
    return client.post("/predict", files=parts)


def _visual(model: str = IMMICH_MODEL) -> dict:
    return {"clip": {"visual": {"modelName": model}}}  # encodeImage


def _textual(model: str = IMMICH_MODEL) -> dict:
    return {"clip": {"textual": {"modelName": model, "options": {"language": "en-US"}}}}


def test_immich_ping(http):
    response = http.get("/ping")
    assert response.status_code == 200 and response.text == "pong"


def test_immich_image_matches_grpc(compat, http):
    image = _jpeg(0, (64, 48))
    response = _immich(http, _visual(), image=image)
    assert response.status_code == 200, response.text
    body = response.json()
    # Immich stores response['clip'] as it is: a JSON array in a string.
    assert isinstance(body["clip"], str)
    got = np.array(json.loads(body["clip"]), np.float32)[None]
    assert (body["imageHeight"], body["imageWidth"]) == (48, 64)
    want = _grpc(compat, [inference_pb2.Input(image=image)])
    assert got.shape == want.shape == (1, 32)
    assert cosine_rows(got, want).min() >= 0.99999


def test_immich_text_matches_grpc(compat, http):
    response = _immich(http, _textual(), text="a photo of a cat on a sofa")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"clip"}  # no image sizes for a text
    got = np.array(json.loads(body["clip"]), np.float32)[None]
    want = _grpc(compat, [inference_pb2.Input(text="a photo of a cat on a sofa")])
    assert cosine_rows(got, want).min() >= 0.99999


def test_immich_lens_name_and_versioned_alias(compat, http):
    want = _grpc(compat, [inference_pb2.Input(text="two dogs")])
    for name in ("tiny", "pinned"):
        response = _immich(http, _textual(name), text="two dogs")
        assert response.status_code == 200, response.text
        got = np.array(json.loads(response.json()["clip"]), np.float32)[None]
        assert cosine_rows(got, want).min() >= 0.99999


def test_immich_unknown_model_names_models_and_aliases(http):
    response = _immich(http, _visual("ViT-L-14__openai"), image=_jpeg(1))
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "ViT-L-14__openai" in detail and "--alias" in detail
    assert "tiny" in detail and f"{IMMICH_MODEL}=tiny" in detail and "pinned=tiny:1" in detail


@pytest.mark.parametrize(
    ("entries", "image", "text", "status", "says"),
    [
        # a missing multipart part
        (_visual(), None, None, 400, "Either image or text must be provided"),
        (None, _jpeg(2), None, 422, "'entries' is missing"),
        (_visual(), None, "a text", 400, "embeds an image"),
        (_textual(), _jpeg(2), None, 400, "embeds a text"),
        # malformed entries
        ('{"clip": {"visual": ', _jpeg(2), None, 422, "not JSON"),
        ('["clip"]', _jpeg(2), None, 422, "maps a task"),
        ({"clip": {"visual": {}}}, _jpeg(2), None, 422, "modelName is missing"),
        ({"clip": {}}, _jpeg(2), None, 422, "one model type"),
        ({"clip": {**_visual()["clip"], **_textual()["clip"]}}, _jpeg(2), None, 422, "one model"),
        (
            {"facial-recognition": {"detection": {"modelName": "buffalo_l"}}},
            _jpeg(2),
            None,
            422,
            "clip task",
        ),
        # an image that does not decode
        (_visual(), b"not an image at all", None, 400, "could not be decoded"),
    ],
)
def test_immich_bad_requests(compat, http, entries, image, text, status, says):
    if entries is None:
        files = {"image": ("blob", image, "application/octet-stream")}
        response = http.post("/predict", files=files)
    else:
        response = _immich(http, entries, image=image, text=text)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and says in body["detail"], body
    assert compat.alive()


def test_immich_one_input_a_request(http):
    """Immich sends one input; two image parts are refused rather than one dropped."""
    response = http.post(
        "/predict",
        files=[
            ("entries", (None, json.dumps(_visual()))),
            ("image", ("blob", _jpeg(3), "application/octet-stream")),
            ("image", ("blob", _jpeg(4), "application/octet-stream")),
        ],
    )
    assert response.status_code == 400
    assert "one input a request" in response.json()["detail"]
    assert _immich(http, _visual(), image=_jpeg(3)).status_code == 200  # still serving


def test_immich_multipart_only_where_it_is_taken(http):
    # The guard lets multipart through to /predict, and still nowhere it is not taken.
    response = http.post(
        "/vectorize", files={"image": ("blob", _jpeg(3), "application/octet-stream")}
    )
    assert response.status_code == 415 and isinstance(response.json()["error"], str)


# --- Weaviate -----------------------------------------------------------------------------


def _weaviate(client: httpx.Client, body: object) -> httpx.Response:
    """POST /vectorize as vectorizer.go sends it: compact JSON, no Content-Type."""
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    response = client.post("/vectorize", content=raw)
    assert "content-type" not in {k.lower() for k in response.request.headers}
    return response


def test_weaviate_health_and_meta(http):
    assert http.get("/.well-known/live").status_code == 204
    ready = http.get("/.well-known/ready")
    assert ready.status_code == 204 and ready.content == b""
    meta = http.get("/meta")
    assert meta.status_code == 200
    assert meta.json()["model"] == "tiny" and meta.json()["dim"] == 32


def test_weaviate_object_matches_grpc(compat, http):
    """An object with text and image properties (vectorizer.go `object`)."""
    texts = ["a red bicycle", "a diagram of a cell"]
    images = [_jpeg(5), _jpeg(6)]
    response = _weaviate(
        http, {"texts": texts, "images": [base64.b64encode(i).decode() for i in images]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"textVectors", "imageVectors"}
    want = _grpc(
        compat,
        [inference_pb2.Input(text=t) for t in texts]
        + [inference_pb2.Input(image=i) for i in images],
    )
    got = np.array(body["textVectors"] + body["imageVectors"], np.float32)
    assert got.shape == want.shape == (4, 32)
    assert cosine_rows(got, want).min() >= 0.99999


def test_weaviate_near_text_and_near_image(compat, http):
    """texts.go sends texts with `[]` images; VectorizeImage one image with `[]` texts;
    a Go nil slice would come as null."""
    text = _weaviate(http, {"texts": ["a cat"], "images": []})
    assert text.status_code == 200 and text.json()["imageVectors"] == []
    assert len(text.json()["textVectors"]) == 1
    image = _jpeg(7)
    got = _weaviate(http, {"texts": None, "images": [base64.b64encode(image).decode()]})
    assert got.status_code == 200 and got.json()["textVectors"] == []
    want = _grpc(compat, [inference_pb2.Input(image=image)])
    assert cosine_rows(np.array(got.json()["imageVectors"], np.float32), want).min() >= 0.99999


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"texts": [], "images": []}, 400, "both empty"),
        ({}, 400, "both empty"),
        ({"texts": [], "images": ["not base64!"]}, 400, "images[0]: not valid base64"),
        (
            {"texts": ["a"], "images": [base64.b64encode(b"GIF89a but no").decode()]},
            400,
            "images: input 0",
        ),
        ({"texts": [f"t{i}" for i in range(MAX_INPUTS + 1)]}, 400, "over the limit"),
        ({"texts": "one text"}, 422, "texts"),
        (b'{"texts": ["a"', 422, "malformed JSON"),
    ],
)
def test_weaviate_bad_requests(compat, http, body, status, says):
    response = _weaviate(http, body)
    assert response.status_code == status, response.text
    error = response.json()
    # vectorizer.go reads `error` as a string.
    assert set(error) == {"error"} and isinstance(error["error"], str)
    assert says in error["error"], error
    assert compat.alive()
    assert _weaviate(http, {"texts": ["still serving"]}).status_code == 200


def test_weaviate_model_not_serving_is_not_ready(tiny_repo):
    proc = ServerProcess(tiny_repo, "--compat", "weaviate", "--weaviate-model", "missing")
    try:
        assert proc.http
        with httpx.Client(base_url=proc.http, timeout=30) as client:
            ready = client.get("/.well-known/ready")
            assert ready.status_code == 503 and "missing" in ready.json()["error"]
            failed = _weaviate(client, {"texts": ["a"]})
            assert failed.status_code == 404 and "tiny" in failed.json()["error"]
            assert client.get("/.well-known/live").status_code == 204
            # immich not enabled on this server
            assert client.get("/ping").status_code == 404
    finally:
        proc.stop()


# --- Refusals before the route ------------------------------------------------------------


def _declared_too_large(base: str, path: str, content_type: str) -> tuple[int, dict]:
    """POSTs a head declaring a body over the 256 MiB limit, and a few bytes of it; the
    guard answers from the header (status, JSON body), closing the connection."""
    url = urlsplit(base)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: lens\r\n{content_type}Content-Length: {300 << 20}\r\n\r\n"
    )
    answer = b""
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"x" * 1024)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    top, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in top.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return int(top.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    ("path", "content_type", "field"),
    [
        ("/vectorize", "", "error"),  # no content type, as Weaviate's client sends it
        ("/predict", "Content-Type: multipart/form-data; boundary=b\r\n", "detail"),
    ],
)
def test_body_over_the_limit_refused_in_the_apps_shape(compat, http, path, content_type, field):
    assert compat.http
    status, body = _declared_too_large(compat.http, path, content_type)
    assert status == 413
    assert set(body) == {field} and "over the limit" in body[field]
    assert _weaviate(http, {"texts": ["still serving"]}).status_code == 200


# --- Opt-in -------------------------------------------------------------------------------


def test_routes_absent_unless_enabled(server: ServerProcess):
    """The session's server runs with the default --compat (kserve only)."""
    assert server.http
    with httpx.Client(base_url=server.http, timeout=30) as client:
        assert client.get("/ping").status_code == 404
        assert _immich(client, _visual(), image=_jpeg(0)).status_code == 404
        assert client.get("/.well-known/ready").status_code == 404
        assert client.get("/meta").status_code == 404
        assert client.post("/vectorize", json={"texts": ["a"]}).status_code == 404


def test_every_compat_route_has_a_scope():
    from lens_server.access import scopes

    app = build_app(None, lambda: "", 1 << 20, compat=("immich", "weaviate"))  # type: ignore[arg-type]
    while not isinstance(app, FastAPI):
        app = app.app  # type: ignore[attr-defined]
    paths = app.openapi()["paths"]
    routes = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert {("POST", "/predict"), ("POST", "/vectorize"), ("GET", "/ping")} <= routes
    # The schema names a path parameter without its converter ({item}, not {item:path}).
    known = {(method, re.sub(r":\w+}", "}", path)) for method, path in scopes.HTTP}
    assert routes - known == set()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--compat", "kserve,nope"], "unknown API nope"),
        (["--alias", "ViT-B-32__openai"], "give ALIAS=MODEL"),
        (["--alias", "a=tiny", "--alias", "a=tiny"], "more than once"),
    ],
)
def test_serve_refuses_bad_compat_options(tiny_repo, args, says):
    done = subprocess.run(
        [str(LENS), "serve", "--repo", str(tiny_repo), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert says in done.stdout + done.stderr


def test_serve_help_says_how_to_point_each_app():
    done = subprocess.run(
        [str(LENS), "serve", "--help"], capture_output=True, text=True, timeout=120
    )
    text = " ".join(done.stdout.split())
    for said in ("MACHINE_LEARNING_URL", "CLIP_INFERENCE_API", "--alias", "--weaviate-model"):
        assert said in text
