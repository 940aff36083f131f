"""`POST /v1/embeddings` through the official `openai` SDK, against gRPC `Embed`."""

from __future__ import annotations

import base64
import io

import grpc
import numpy as np
import pytest
from lens.v1 import inference_pb2, inference_pb2_grpc
from openai import BadRequestError, NotFoundError, OpenAI
from PIL import Image

from lens_server.vectors import cosine_rows
from tests.conftest import ServerProcess


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def openai_client(server: ServerProcess) -> OpenAI:
    assert server.http, "the server printed no HTTP address"
    return OpenAI(base_url=f"{server.http}/v1", api_key="unused", max_retries=0)


def _grpc_embed(channel: grpc.Channel, inputs: list[inference_pb2.Input]) -> np.ndarray:
    response = inference_pb2_grpc.InferenceStub(channel).Embed(
        inference_pb2.EmbedRequest(inputs=inputs), timeout=30
    )
    m = response.embeddings
    return np.frombuffer(m.data, "<f4").reshape(m.rows, m.cols)


def _vectors(result) -> np.ndarray:
    """The SDK decodes base64 itself when it chose it (no encoding_format given); asked for
    explicitly, base64 comes back as the string: little-endian float32."""
    rows = [
        np.frombuffer(base64.b64decode(d.embedding), "<f4")
        if isinstance(d.embedding, str)
        else np.array(d.embedding, np.float32)
        for d in result.data
    ]
    return np.stack(rows)


TEXTS = ["a photo of a cat", "a diagram", "two dogs on a beach"]


@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_openai_sdk_texts_match_grpc(openai_client, channel, encoding):
    chosen = {"encoding_format": encoding} if encoding else {}  # None: the SDK's own (base64)
    result = openai_client.embeddings.create(model="tiny", input=TEXTS, **chosen)
    assert result.object == "list" and [d.index for d in result.data] == [0, 1, 2]
    assert result.model == "tiny:1"
    got = _vectors(result)
    want = _grpc_embed(channel, [inference_pb2.Input(text=t) for t in TEXTS])
    assert got.shape == want.shape
    assert cosine_rows(got, want).min() >= 0.99999
    # Real token counts: start and end tokens around each text's tokens.
    assert result.usage.prompt_tokens == result.usage.total_tokens > 2 * len(TEXTS)


def test_openai_sdk_one_string_and_default_model(openai_client):
    result = openai_client.embeddings.create(model="", input="hello")
    assert len(result.data) == 1 and len(result.data[0].embedding) == 32


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_openai_sdk_images_match_grpc(openai_client, channel, encoding):
    images = [_jpeg(0), _jpeg(1)]
    uri = "data:image/jpeg;base64," + base64.b64encode(images[0]).decode()
    bare = base64.b64encode(images[1]).decode()
    result = openai_client.embeddings.create(
        model="tiny",
        input=[uri, bare],
        encoding_format=encoding,
        extra_body={"modality": "image"},
    )
    got = _vectors(result)
    want = _grpc_embed(channel, [inference_pb2.Input(image=i) for i in images])
    assert cosine_rows(got, want).min() >= 0.99999
    # A data URI of an image is an image even without `modality`.
    alone = openai_client.embeddings.create(model="tiny", input=[uri])
    assert cosine_rows(_vectors(alone), want[:1]).min() >= 0.99999


def test_openai_sdk_errors(openai_client):
    with pytest.raises(NotFoundError, match="Available models: tiny"):
        openai_client.embeddings.create(model="nope", input="x")
    with pytest.raises(NotFoundError):
        openai_client.embeddings.create(model="tiny:9", input="x")
    with pytest.raises(BadRequestError, match="nested"):
        openai_client.embeddings.create(model="tiny", input="x", dimensions=16)
    with pytest.raises(BadRequestError, match="above"):
        openai_client.embeddings.create(model="tiny", input="x", dimensions=64)
    with pytest.raises(BadRequestError, match="inputs is empty"):
        openai_client.embeddings.create(model="tiny", input=[])
    with pytest.raises(BadRequestError, match=r"input\[0\]: not valid base64"):
        openai_client.embeddings.create(
            model="tiny", input=["@@@"], extra_body={"modality": "image"}
        )


def test_openai_models_list(openai_client):
    found = openai_client.models.list()
    assert [m.id for m in found.data] == ["tiny"]
    assert openai_client.models.retrieve("tiny").id == "tiny"
