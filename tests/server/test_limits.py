"""Limits per client against real servers: per API key where the server has keys (each test
uses keys of its own, so their buckets start full), per peer address where it has none. A
client over its limit gets 429 / RESOURCE_EXHAUSTED with Retry-After while another is
served at the same time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from lens.v1 import inference_pb2, inference_pb2_grpc

from lens_server.access.limits import Limiter
from lens_server.config import ClientLimits
from lens_server.errors import RateLimited
from tests.conftest import ServerProcess

KEYS = [f"limits-key-{i}" for i in range(9)]


@pytest.fixture(scope="module")
def limited(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text("".join(f"{key} embed\n" for key in KEYS))
    server = ServerProcess(
        tiny_repo,
        "--api-keys",
        str(path),
        "--rate-limit-rps",
        "2",
        "--rate-limit-inputs",
        "10",
        "--max-in-flight-per-client",
        "1",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(limited: ServerProcess) -> Iterator[inference_pb2_grpc.InferenceStub]:
    with grpc.insecure_channel(limited.address) as channel:
        yield inference_pb2_grpc.InferenceStub(channel)


def _texts(n: int) -> inference_pb2.EmbedRequest:
    return inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text=f"t{i}") for i in range(n)])


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _post(server: ServerProcess, key: str, texts: int = 1) -> httpx.Response:
    body = {"inputs": [{"text": f"t{i}"} for i in range(texts)]}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{server.http}/v1/embed", json=body, headers=headers, timeout=30)


def test_startup_line_names_the_limits(limited: ServerProcess):
    said = "limits per API key: 2 requests/s, 10 inputs/s, 1 in flight"
    assert any(said in line for line in limited.log)


def test_http_over_requests_per_second_gets_429_while_another_key_is_served(limited):
    answers = [_post(limited, KEYS[0]) for _ in range(6)]
    refused = [a for a in answers if a.status_code == 429]
    assert refused, [a.status_code for a in answers]
    assert int(refused[0].headers["retry-after"]) >= 1
    error = refused[0].json()["error"]
    assert error["type"] == "rate_limit_error" and "2 requests/s" in error["message"]
    assert _post(limited, KEYS[1]).status_code == 200  # its own bucket, full


def test_grpc_over_inputs_per_second_is_resource_exhausted(stub):
    stub.Embed(_texts(10), metadata=_auth(KEYS[2]), timeout=30)  # the whole bucket
    with pytest.raises(grpc.RpcError) as refused:
        stub.Embed(_texts(8), metadata=_auth(KEYS[2]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "10 inputs/s" in refused.value.details()
    trailing = dict(refused.value.trailing_metadata() or ())
    assert int(trailing["retry-after"]) >= 1
    assert stub.Embed(_texts(8), metadata=_auth(KEYS[3]), timeout=30).embeddings.rows == 8


def test_http_inputs_are_counted_from_the_body(limited):
    assert _post(limited, KEYS[4], texts=10).status_code == 200
    answer = _post(limited, KEYS[4], texts=5)
    assert answer.status_code == 429 and "10 inputs/s" in answer.json()["error"]["message"]


def test_in_flight_limit_across_both_front_doors(limited, stub):
    """A stream open with one key holds its one request in flight: that key's other calls
    are refused on both transports while another key's are served."""
    release = threading.Event()

    def requests() -> Iterator[inference_pb2.EmbedRequest]:
        yield _texts(1)
        release.wait(30)

    stream = stub.EmbedStream(requests(), metadata=_auth(KEYS[5]), timeout=60)
    try:
        next(stream)  # the stream has passed the gate and is in flight
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(_texts(1), metadata=_auth(KEYS[5]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "in flight" in refused.value.details()
        answer = _post(limited, KEYS[5])
        assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
        assert _post(limited, KEYS[6]).status_code == 200
    finally:
        release.set()
        list(stream)
    assert stub.Embed(_texts(1), metadata=_auth(KEYS[5]), timeout=30).embeddings.rows == 1


def test_a_stream_is_paced_not_refused(stub):
    started = time.monotonic()
    responses = stub.EmbedStream(iter([_texts(10)] * 3), metadata=_auth(KEYS[8]), timeout=60)
    assert [r.embeddings.rows for r in responses] == [10, 10, 10]
    assert time.monotonic() - started >= 1.5  # 30 inputs at 10/s, the first 10 at once


def test_openai_sdk_sees_rate_limit_error(limited):
    client = openai.OpenAI(base_url=f"{limited.http}/v1", api_key=KEYS[7], max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(6):
            client.embeddings.create(model="tiny", input=["a cat"])
    assert int(refused.value.response.headers["retry-after"]) >= 1


# -- without keys: per peer address -------------------------------------------------------


@pytest.fixture(scope="module")
def by_address(tiny_repo: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tiny_repo, "--rate-limit-rps", "1")
    yield server
    server.stop()


def test_without_keys_limits_count_by_address(by_address: ServerProcess):
    assert any("limits per client address: 1 requests/s" in line for line in by_address.log)
    health = [httpx.get(f"{by_address.http}/health", timeout=30) for _ in range(3)]
    assert {h.status_code for h in health} == {200}  # open calls are not counted
    body = {"inputs": [{"text": "a"}]}
    answers = [httpx.post(f"{by_address.http}/v1/embed", json=body, timeout=30) for _ in range(4)]
    assert 429 in [a.status_code for a in answers]
    with grpc.insecure_channel(by_address.address) as channel:  # the same address, counted
        embed = inference_pb2_grpc.InferenceStub(channel).Embed
        codes = []
        for _ in range(4):
            try:
                embed(_texts(1), timeout=30)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes


# -- the buckets, on a clock of the test's ---------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_larger_than_the_bucket_passes_and_leaves_it_in_debt():
    clock = Clock()
    limiter = Limiter(ClientLimits(inputs_per_s=10), clock)
    limiter.admit("a", "a", 25)  # full bucket: served, 15 owed
    limiter.release("a")
    with pytest.raises(RateLimited) as refused:
        limiter.admit("a", "a", 1)
    assert refused.value.retry_after_s == 2  # (1 + 15) / 10 s, rounded up
    clock.now = 1.6
    limiter.admit("a", "a", 1)
    limiter.admit("b", "b", 10)  # another client's bucket is its own


def test_requests_per_second_and_in_flight():
    clock = Clock()
    limiter = Limiter(ClientLimits(requests_per_s=2, max_in_flight=2), clock)
    limiter.admit("a", "a", 0)
    limiter.admit("a", "a", 0)
    with pytest.raises(RateLimited, match="in flight"):
        limiter.admit("a", "a", 0)
    limiter.release("a")
    with pytest.raises(RateLimited, match="2 requests/s") as refused:
        limiter.admit("a", "a", 0)
    assert refused.value.retry_after_s == 1
    clock.now = 0.5
    limiter.admit("a", "a", 0)
    assert limiter.pace("a", 5) == 0.0  # no inputs limit: a stream is not held


def test_no_limits_counts_nothing():
    limiter = Limiter(ClientLimits())
    for _ in range(100):
        limiter.admit("a", "a", 1000)
    assert not limiter.active
