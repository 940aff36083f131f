"""Embeddings as int8/uint8/binary/ubinary codes over both transports, checked against
sentence-transformers' own `quantize_embeddings` on the float32 vectors of the same inputs,
and the refusals of an unknown encoding or ranges of the wrong size."""

from __future__ import annotations

import base64

import grpc
import httpx
import numpy as np
import pytest
from lens.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from sentence_transformers.util.quantization import quantize_embeddings

from tests.conftest import ServerProcess
from tests.server.test_grpc import embed, matrix

TEXTS = [f"a photo of {n}" for n in ("a cat", "a dog", "coffee", "the moon", "a rocket")]
DTYPES = {"int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}


def codes_of(channel: grpc.Channel, encoding: str, ranges=()) -> inference_pb2.EmbedResponse:
    stub = inference_pb2_grpc.InferenceStub(channel)
    request = inference_pb2.EmbedRequest(
        inputs=[inference_pb2.Input(text=t) for t in TEXTS],
        model=common_pb2.ModelRef(name="tiny"),
        encoding=encoding,
        ranges=list(ranges),
    )
    return stub.Embed(request, timeout=60)


@pytest.fixture(scope="module")
def floats(server: ServerProcess) -> np.ndarray:
    with grpc.insecure_channel(server.address) as channel:
        inputs = (inference_pb2.Input(text=t) for t in TEXTS)
        return matrix(embed(channel, *inputs, model="tiny"))


@pytest.mark.parametrize("encoding", ["int8", "uint8", "binary", "ubinary"])
def test_grpc_codes_are_sentence_transformers(channel, floats, encoding):
    response = codes_of(channel, encoding)
    codes = response.codes
    assert not response.embeddings.data and codes.encoding == encoding
    got = np.frombuffer(codes.data, DTYPES[encoding]).reshape(codes.rows, codes.cols)
    want = quantize_embeddings(floats, precision=encoding)
    assert got.shape == want.shape
    # int8 codes may differ by one step where a value falls on a step's edge in float32.
    assert np.abs(got.astype(int) - want.astype(int)).max() <= (1 if "int" in encoding else 0)
    if "int" in encoding:
        ranges = np.asarray(codes.ranges).reshape(2, -1)
        np.testing.assert_allclose(ranges, [floats.min(0), floats.max(0)], atol=1e-6)
    else:
        assert not codes.ranges


def test_given_ranges_make_codes_of_two_requests_agree(channel, floats):
    first = codes_of(channel, "int8").codes
    ranges = np.asarray(first.ranges, np.float32).reshape(2, -1)
    wider = np.stack([ranges[0] - 0.1, ranges[1] + 0.1])
    again = codes_of(channel, "int8", wider.reshape(-1)).codes
    got = np.frombuffer(again.data, np.int8).reshape(again.rows, again.cols)
    want = quantize_embeddings(floats, precision="int8", ranges=wider)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    np.testing.assert_allclose(np.asarray(again.ranges).reshape(2, -1), wider, atol=1e-6)


def test_grpc_refusals(channel):
    with pytest.raises(grpc.RpcError) as raised:
        codes_of(channel, "int4")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "encoding must be one of" in raised.value.details() and "int4" in raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        codes_of(channel, "int8", [0.0, 1.0, 2.0])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ranges must hold 2 × 32 values" in raised.value.details()


def test_http_codes_as_integers_and_base64(server: ServerProcess, floats):
    assert server.http
    body = {"inputs": [{"text": t} for t in TEXTS], "model": "tiny", "encoding": "ubinary"}
    plain = httpx.post(f"{server.http}/v1/embed", json=body, timeout=60).json()
    want = quantize_embeddings(floats, precision="ubinary")
    assert plain["encoding"] == "ubinary" and plain["ranges"] is None
    np.testing.assert_array_equal(np.asarray(plain["embeddings"]), want)
    packed = httpx.post(
        f"{server.http}/v1/embed", json={**body, "encoding_format": "base64"}, timeout=60
    ).json()
    rows = [np.frombuffer(base64.b64decode(r), np.uint8) for r in packed["embeddings"]]
    np.testing.assert_array_equal(np.stack(rows), want)
    uint8 = httpx.post(f"{server.http}/v1/embed", json={**body, "encoding": "uint8"}, timeout=60)
    ranges = np.asarray(uint8.json()["ranges"])
    np.testing.assert_allclose(ranges, [floats.min(0), floats.max(0)], atol=1e-6)
    for bad, words in [
        ({"encoding": "int4"}, "encoding"),
        ({"encoding": "int8", "ranges": [[0.0], [1.0]]}, "ranges must hold"),
    ]:
        refused = httpx.post(f"{server.http}/v1/embed", json={**body, **bad}, timeout=60)
        assert refused.status_code in (400, 422) and words in refused.text
