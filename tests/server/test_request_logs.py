"""Request logs of `lens serve`, read from what real server processes write: one line per
request on both front doors with its id, method, model:version, inputs, status, duration
and client; the id a client sends taken and returned, one made where it sends none; in JSON
(one server with API keys) and in text."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lens.v1 import common_pb2, inference_pb2, inference_pb2_grpc

from lens_server import logs
from tests.conftest import ServerProcess

KEY = "log-test-key-5f2d9c"
WRONG_KEY = "not-this-servers-key-91a7"
EMBED = "/lens.v1.Inference/Embed"


@pytest.fixture(scope="module")
def logged(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server logging JSON at debug, with an API key required."""
    keys = tmp_path_factory.mktemp("log-keys") / "keys.txt"
    keys.write_text(f"{KEY} embed\n")
    proc = ServerProcess(
        tiny_repo, "--log-format", "json", "--log-level", "debug", "--api-keys", str(keys)
    )
    yield proc
    proc.stop()


def _records(proc: ServerProcess) -> list[dict[str, Any]]:
    """Every JSON line the server wrote (start-up lines are plain text on stdout)."""
    found = []
    for line in list(proc.log):
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def _requests(proc: ServerProcess, request_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    """The request lines with `request_id`, once there is one (the line is written as the
    answer leaves, and read from the pipe a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            r
            for r in _records(proc)
            if r["logger"] == "lens.requests" and r.get("request_id") == request_id
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _auth(key: str = KEY) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _embed_request(model: str = "tiny") -> inference_pb2.EmbedRequest:
    return inference_pb2.EmbedRequest(
        model=common_pb2.ModelRef(name=model),
        inputs=[inference_pb2.Input(text="a cat"), inference_pb2.Input(text="a dog")],
    )


def test_grpc_embed_logs_one_line_with_the_id_sent(logged: ServerProcess):
    with grpc.insecure_channel(logged.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        _, call = stub.Embed.with_call(
            _embed_request(), metadata=(*_auth(), ("x-request-id", "grpc-id-1")), timeout=30
        )
    assert ("x-request-id", "grpc-id-1") in tuple(call.initial_metadata())
    (line,) = _requests(logged, "grpc-id-1")
    assert line["level"] == "info"
    assert line["message"] == "request"
    assert line["transport"] == "grpc"
    assert line["method"] == EMBED
    assert line["model"] == "tiny:1"
    assert line["inputs"] == 2
    assert line["status"] == "OK"
    assert 0 < line["duration_ms"] < 60_000
    assert line["client"].startswith("key ") and line["client"].endswith("keys.txt:1")
    assert line["peer"] == "127.0.0.1"
    assert line["time"].endswith("Z")


def test_http_embeddings_logs_one_line_with_the_id_sent(logged: ServerProcess):
    response = httpx.post(
        f"{logged.http}/v1/embeddings",
        json={"model": "tiny", "input": ["a cat", "a dog", "a bird"]},
        headers={"authorization": f"Bearer {KEY}", "x-request-id": "http-id-1"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "http-id-1"
    (line,) = _requests(logged, "http-id-1")
    assert line["transport"] == "http"
    assert line["method"] == "POST /v1/embeddings"
    assert line["model"] == "tiny:1"
    assert line["inputs"] == 3
    assert line["status"] == 200
    assert line["client"].startswith("key ")
    assert line["duration_ms"] > 0


def test_an_id_is_made_and_returned_when_none_or_an_unusable_one_is_sent(logged: ServerProcess):
    made = []
    for sent in (None, "has spaces in it", "x" * 129):
        headers = {"authorization": f"Bearer {KEY}"}
        if sent is not None:
            headers["x-request-id"] = sent
        response = httpx.post(
            f"{logged.http}/v1/embeddings",
            json={"model": "tiny", "input": "a cat"},
            headers=headers,
            timeout=30,
        )
        assert response.status_code == 200
        made.append(response.headers["x-request-id"])
    assert len(set(made)) == 3
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in made)  # uuid4 hex
    for request_id in made:
        (line,) = _requests(logged, request_id)
        assert line["inputs"] == 1
    with grpc.insecure_channel(logged.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        _, call = stub.Embed.with_call(_embed_request(), metadata=_auth(), timeout=30)
    (made_grpc,) = [v for k, v in call.initial_metadata() if k == "x-request-id"]
    (line,) = _requests(logged, made_grpc)
    assert line["method"] == EMBED


def test_failing_requests_log_their_status(logged: ServerProcess):
    with grpc.insecure_channel(logged.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Embed(
                _embed_request("no-such-model"),
                metadata=(*_auth(), ("x-request-id", "grpc-unknown")),
                timeout=30,
            )
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert ("x-request-id", "grpc-unknown") in tuple(failed.value.initial_metadata())
        with pytest.raises(grpc.RpcError) as refused:  # refused before the servicer
            stub.Embed(
                _embed_request(),
                metadata=(*_auth(WRONG_KEY), ("x-request-id", "grpc-bad-key")),
                timeout=30,
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    response = httpx.post(
        f"{logged.http}/v1/embeddings",
        json={"model": "no-such-model", "input": "a cat"},
        headers={"authorization": f"Bearer {KEY}", "x-request-id": "http-unknown"},
        timeout=30,
    )
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "http-unknown"
    (grpc_line,) = _requests(logged, "grpc-unknown")
    assert grpc_line["status"] == "NOT_FOUND"
    assert "model" not in grpc_line  # no version served it
    (wrong,) = _requests(logged, "grpc-bad-key")
    assert wrong["status"] == "UNAUTHENTICATED"
    assert wrong["client"] == "127.0.0.1"  # no key entry: the peer
    (http_line,) = _requests(logged, "http-unknown")
    assert http_line["status"] == 404
    # The boundary's line about the error carries the request's id too.
    said = [r for r in _records(logged) if r.get("request_id") == "http-unknown"]
    assert any(r["logger"] != "lens.requests" and "404" in r["message"] for r in said)


def test_probes_and_scrapes_are_logged_at_debug(logged: ServerProcess):
    with grpc.insecure_channel(logged.address) as channel:
        health_pb2_grpc.HealthStub(channel).Check.with_call(
            health_pb2.HealthCheckRequest(), metadata=(("x-request-id", "probe-grpc"),)
        )
    for path, request_id in (("/health/live", "probe-http"), ("/metrics", "scrape")):
        response = httpx.get(f"{logged.http}{path}", headers={"x-request-id": request_id})
        assert response.status_code == 200
    for request_id, method in (
        ("probe-grpc", "/grpc.health.v1.Health/Check"),
        ("probe-http", "GET /health/live"),
        ("scrape", "GET /metrics"),
    ):
        (line,) = _requests(logged, request_id)
        assert (line["level"], line["method"]) == ("debug", method)


def test_undecodable_requests_are_logged_through_the_same_formatter(logged: ServerProcess):
    with grpc.insecure_channel(logged.address) as channel:
        raw = channel.unary_unary(EMBED)  # bytes as they are: no serializer
        with pytest.raises(grpc.RpcError) as refused:
            raw(b"\x0a\xff\xff\xff\xff", metadata=(("x-request-id", "undecodable"),), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (line,) = _requests(logged, "undecodable")
    assert line["status"] == "INVALID_ARGUMENT"
    said = [r for r in _records(logged) if r.get("request_id") == "undecodable"]
    (warning,) = [r for r in said if r["level"] == "warning"]
    assert warning["message"].startswith("undecodable request from ")
    assert (warning["method"], warning["unlogged"]) == (EMBED, 0)


def test_errors_and_their_tracebacks_are_one_json_line():
    """In this process: the formatter every logger goes through, with an exception."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        logs.setup("info", "json", stream)
        try:
            raise RuntimeError("the index is gone")
        except RuntimeError:
            logging.getLogger("lens_server.test").exception("search failed", extra=logs.fields(k=5))
        logging.getLogger("lens_server.test").debug("below the level")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"], record["message"]) == (
        "error",
        "lens_server.test",
        "search failed",
    )
    assert record["k"] == 5
    assert "Traceback" in record["exception"] and "the index is gone" in record["exception"]
    with pytest.raises(ValueError, match="log format 'xml': use one of text, json"):
        logs.setup("info", "xml", stream)


def test_the_key_never_appears_in_the_log(logged: ServerProcess):
    """Last of the JSON tests: stops the server to read all it wrote."""
    logged.stop()
    written = "".join(logged.log)
    assert '"logger": "lens.requests"' in written
    assert KEY not in written
    assert WRONG_KEY not in written
    # Every line after start-up is one JSON object, errors included.
    for line in written.splitlines():
        if line.startswith("{"):
            json.loads(line)


def _text_lines(proc: ServerProcess, request_id: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in list(proc.log) if f" request_id={request_id} " in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_text_format_gives_one_readable_line_per_request(server: ServerProcess):
    """The session's server: text, at info (the defaults)."""
    with grpc.insecure_channel(server.address) as channel:
        inference_pb2_grpc.InferenceStub(channel).Embed(
            _embed_request(), metadata=(("x-request-id", "text-grpc"),), timeout=30
        )
    response = httpx.post(
        f"{server.http}/v1/embeddings",
        json={"model": "tiny", "input": "a cat"},
        headers={"x-request-id": "text-http"},
        timeout=30,
    )
    assert response.status_code == 200
    httpx.get(f"{server.http}/health/live", headers={"x-request-id": "text-probe"})
    httpx.get(f"{server.http}/v1/models", headers={"x-request-id": "text-after"})
    (grpc_line,) = _text_lines(server, "text-grpc")
    assert " INFO lens.requests: request " in grpc_line
    for said in (f"method={EMBED}", "model=tiny:1", "inputs=2", "status=OK", "client=127.0.0.1"):
        assert f" {said}" in grpc_line
    (http_line,) = _text_lines(server, "text-http")
    for said in ('method="POST /v1/embeddings"', "inputs=1", "status=200", "duration_ms="):
        assert f" {said}" in http_line
    assert _text_lines(server, "text-after")  # written after the probe's would have been
    assert _text_lines(server, "text-probe", timeout=0) == []  # debug: below the default info
