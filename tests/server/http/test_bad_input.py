"""Bad input over HTTP: each refusal has its status and a message naming what was wrong, and
the server serves the next request. Against `lens serve` processes (the session's, and one
with small limits), and, where the test must see the batcher or hold a tower, a server in this
process (`InProcessServer`)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import select
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from lens.v1 import inference_pb2, inference_pb2_grpc

from lens_server.config import BatchConfig, Limits
from tests.conftest import ServerProcess, encode, photo
from tests.server.http.test_shared_batches import InProcessServer, held, wait_until

EMBEDDINGS = "/v1/embeddings"


def still_serving(base: str) -> None:
    response = httpx.post(f"{base}{EMBEDDINGS}", json={"input": ["still here"]}, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 32


def refused(response: httpx.Response, status: int, *words: str) -> str:
    """The error's message, once the response is checked to be `status` in lens's error shape
    with a message holding each of `words`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["type"]
    for word in words:
        assert word in error["message"], error["message"]
    return error["message"]


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    assert server.http
    with httpx.Client(base_url=server.http, timeout=30) as client:
        yield client
    still_serving(server.http)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


JPEG = encode(photo("astronaut"), "JPEG")


# -- the shape of the request -----------------------------------------------------------------


def test_malformed_json(http):
    response = http.post(
        EMBEDDINGS, content=b'{"input": ["a cat"', headers={"content-type": "application/json"}
    )
    refused(response, 400, "malformed JSON")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"input": 5}, ["input", "valid string"]),
        ({"input": [[101, 2023, 102]]}, ["input", "token ids are not accepted"]),
        ({"input": [101, 2023, 102]}, ["input", "token ids are not accepted"]),
        ({}, ["input", "Field required"]),
        ({"input": "x", "encoding_format": "hex"}, ["encoding_format", "'float' or 'base64'"]),
        ({"input": "x", "modality": "audio"}, ["modality"]),
    ],
)
def test_wrong_shape(http, body, words):
    refused(http.post(EMBEDDINGS, json=body), 400, *words)


def test_wrong_shape_of_embed(http):
    both = {"inputs": [{"text": "a", "image": b64(JPEG)}]}
    refused(http.post("/v1/embed", json=both), 400, "inputs[0]", "exactly one of text or image")
    refused(http.post("/v1/embed", json={"inputs": "a cat"}), 400, "body.inputs")


def test_empty_input(http):
    refused(http.post(EMBEDDINGS, json={"input": []}), 400, "inputs is empty")
    refused(http.post("/v1/embed", json={"inputs": []}), 400, "inputs is empty")


def test_wrong_content_type(http):
    text = {"content-type": "text/plain"}
    refused(
        http.post(EMBEDDINGS, content=b"a cat", headers=text),
        415,
        "'text/plain'",
        "application/json",
    )
    # /v1/embeddings takes no uploads; /v1/embed does, and says so.
    refused(http.post(EMBEDDINGS, files={"image": JPEG}), 415, "'multipart/form-data'")
    refused(http.post("/v1/embed", content=b"a cat", headers=text), 415, "multipart/form-data")


# -- images ---------------------------------------------------------------------------------------


def test_bad_base64(http):
    image = {"input": ["@@@ not base64"], "modality": "image"}
    refused(http.post(EMBEDDINGS, json=image), 400, "input[0]", "not valid base64")
    refused(
        http.post("/v1/embed", json={"inputs": [{"text": "a"}, {"image": "@@@"}]}),
        400,
        "inputs[1].image",
        "not valid base64",
    )


def test_data_uri_that_is_not_an_image(http):
    uri = "data:text/plain;base64," + b64(b"hello")
    body = {"input": [uri], "modality": "image"}
    refused(http.post(EMBEDDINGS, json=body), 400, "input[0]", "'text/plain' is not an image")
    refused(http.post("/v1/embed", json={"inputs": [{"image": uri}]}), 400, "is not an image")


def test_image_that_does_not_decode_names_its_index(http):
    broken = "data:image/jpeg;base64," + b64(JPEG[: len(JPEG) // 3])
    good = "data:image/jpeg;base64," + b64(JPEG)
    body = {"input": [good, broken], "modality": "image"}
    message = refused(http.post(EMBEDDINGS, json=body), 400, "input 1")
    assert "input 0" not in message
    garbage = [("image", ("a.jpg", JPEG)), ("image", ("b.jpg", b"not an image at all"))]
    refused(http.post("/v1/embed", files=garbage), 400, "input 1", "could not be decoded")


# -- what the request names -------------------------------------------------------------------


def test_unknown_model_or_version_lists_what_exists(http):
    refused(
        http.post(EMBEDDINGS, json={"input": "x", "model": "nope"}), 404, "Available models: tiny"
    )
    refused(
        http.post(EMBEDDINGS, json={"input": "x", "model": "tiny:9"}), 404, "Available versions: 1"
    )
    refused(http.post(EMBEDDINGS, json={"input": "x", "model": "tiny:x"}), 400, "version")
    refused(http.get("/v1/models/nope"), 404, "Available models: tiny")
    refused(http.post("/v1/embed", json={"inputs": [{"text": "x"}], "model": "nope"}), 404, "tiny")


def test_unknown_collection_or_classifier_lists_what_exists(http):
    refused(http.get("/v1/collections/nope"), 404, "collection 'nope' not found", "Available")
    search = {"query": {"text": "a cat"}}
    refused(http.post("/v1/collections/nope/search", json=search), 404, "'nope' not found")
    refused(http.get("/v1/classifiers/nope"), 404, "classifier 'nope' not found", "Available")
    classify = {"images": [b64(JPEG)], "classifier": "nope"}
    refused(http.post("/v1/classify", json=classify), 404, "classifier 'nope' not found")


@pytest.mark.parametrize(
    ("dimensions", "words"),
    [(0, [">= 1"]), (-3, [">= 1"]), (64, ["above", "32"]), (16, ["nested"])],
)
def test_dimensions_out_of_range_or_unsupported(http, dimensions, words):
    body = {"input": "x", "model": "tiny", "dimensions": dimensions}
    refused(http.post(EMBEDDINGS, json=body), 400, "dimensions", *words)


# -- sizes and load ---------------------------------------------------------------------------


def raw_request(base: str, head: str, body: Iterator[bytes]) -> bytes:
    """Sends `head`, then the parts of `body` until the server answers; returns what it
    answered (status line, headers and body), read to the end of the connection."""
    url = urlsplit(base)
    answer = b""
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1"))
        for part in body:
            if select.select([sock], [], [], 0)[0]:
                break  # it answered before the body was all sent
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def answered(raw: bytes) -> tuple[int, str]:
    """(status, error message) of a raw HTTP/1.1 answer whose body is chunked or not."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"transfer-encoding: chunked" in head.lower():
        data, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            if not int(size, 16):
                break
            data, rest = data + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
        body = data
    return status, json.loads(body)["error"]["message"]


def test_declared_body_over_the_limit_is_refused_unread(server):
    """The session server keeps the default limit, 256 MiB (`Limits.max_message_bytes`;
    `lens serve` has no flag for it): a body declared larger is refused from its header, with
    a few bytes of it sent."""
    declared = 300 << 20
    head = (
        f"POST {EMBEDDINGS} HTTP/1.1\r\nHost: lens\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    status, message = answered(raw_request(server.http, head, iter([b'{"input": "', b"x" * 1024])))
    assert status == 413 and f"{declared} bytes, over the limit of {256 << 20}" in message
    still_serving(server.http)


# -- a server in this process, with small limits, whose tower the test holds -----------------

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def small(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    lens = InProcessServer(
        tiny_repo,
        tmp_path_factory.mktemp("collections"),
        batch=BatchConfig(max_batch_size=4, max_queue_delay_ms=5, max_queue_size=8),
        limits=Limits(max_inputs_per_request=16, max_message_bytes=LIMIT),
    )
    yield lens
    lens.stop()


def test_streamed_body_over_the_limit_is_refused_before_it_ends(small):
    """A chunked body (no Content-Length) is refused once what arrived passes the limit: the
    answer comes while the rest of the body is still unsent."""
    head = (
        f"POST {EMBEDDINGS} HTTP/1.1\r\nHost: lens\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    part, parts, sent = 64 << 10, 64 * LIMIT // (64 << 10), []

    def chunks() -> Iterator[bytes]:
        for _ in range(parts):  # 64 times the limit, and no last chunk: the body never ends
            sent.append(part)
            yield f"{part:x}\r\n".encode() + b"x" * part + b"\r\n"

    status, message = answered(raw_request(small.http, head, chunks()))
    assert status == 413 and f"over the limit of {LIMIT} bytes" in message
    assert len(sent) < parts, "the answer came only once the whole body was sent"
    still_serving(small.http)


def test_more_inputs_than_the_limit(small):
    refused(
        httpx.post(f"{small.http}{EMBEDDINGS}", json={"input": ["a"] * 17}),
        400,
        "17 inputs is over the limit of 16",
    )


def test_full_queue_is_429_with_retry_after(small):
    """Held behind a running batch, a request fills the text queue (8 inputs); one more input
    is refused at once with 429 and Retry-After, and the queued request still runs."""
    text = small.batcher("text")
    url = f"{small.http}{EMBEDDINGS}"
    with ThreadPoolExecutor(2) as pool, held(text) as gate:
        busy = pool.submit(httpx.post, url, json={"input": ["busy"]}, timeout=60)
        assert gate.started.wait(30)
        queued = pool.submit(httpx.post, url, json={"input": ["q"] * 8}, timeout=60)
        wait_until(lambda: text.queued == 8, "the queue is full")
        over = httpx.post(url, json={"input": ["one more"]}, timeout=30)
        refused(over, 429, "queue full", "8 of 8 inputs waiting")
        assert over.headers["retry-after"] == "1"
        # A request larger than the whole queue is refused the same way, however idle.
        refused(httpx.post(url, json={"input": ["q"] * 9}, timeout=30), 429, "queue full")
        gate.open()
        assert busy.result(60).status_code == queued.result(60).status_code == 200
    still_serving(small.http)


def test_a_client_that_leaves_has_its_inputs_dropped_before_the_model(small, caplog):
    """Over HTTP as over gRPC: a request whose client went away while its inputs waited
    behind a running batch leaves the queue, and its inputs never reach the tower."""
    caplog.set_level(logging.INFO, logger="lens_server.http.guard")
    text, version = small.batcher("text"), small.version()
    before = (text.stats.inputs, text.stats.dropped)
    body = json.dumps({"input": ["left", "before", "its answer"]}).encode()
    head = (
        f"POST {EMBEDDINGS} HTTP/1.1\r\nHost: lens\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    url = urlsplit(small.http)
    with (
        ThreadPoolExecutor(2) as pool,
        grpc.insecure_channel(small.address) as channel,
        held(text) as gate,
    ):
        stub = inference_pb2_grpc.InferenceStub(channel)
        busy = pool.submit(httpx.post, f"{small.http}{EMBEDDINGS}", json={"input": ["b"]})
        assert gate.started.wait(30)
        wait_until(lambda: version.in_flight == 1, "the busy request holds the version")
        # Over HTTP: a client sends its request, then closes the connection.
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(head.encode() + body)
            wait_until(lambda: text.queued == 3, "the HTTP request's inputs are queued")
        wait_until(lambda: version.in_flight == 1, "the HTTP request has ended")
        assert "the client went away; request dropped" in caplog.text
        # Over gRPC: a call cancelled by its client.
        request = inference_pb2.EmbedRequest(
            inputs=[inference_pb2.Input(text=t) for t in ("gone", "too")]
        )
        call = stub.Embed.future(request, timeout=60)
        wait_until(lambda: text.queued == 5, "the gRPC call's inputs are queued")
        call.cancel()
        wait_until(lambda: version.in_flight == 1, "the gRPC call has ended")
        gate.open()
        assert busy.result(60).status_code == 200
    still_serving(small.http)
    # Run: the busy input and the one after; dropped: the three and the two of those who left.
    assert (text.stats.inputs - before[0], text.stats.dropped - before[1]) == (2, 5)
    assert 3 not in list(text.stats.sizes)[-2:] and 5 not in list(text.stats.sizes)[-2:]
