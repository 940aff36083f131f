"""The real server over a real socket: embeddings, ordering, streaming, models, bad input."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from lens.v1 import common_pb2, inference_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc
from PIL import Image

from tests.conftest import ServerProcess, encode, photo

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "logo", "page")
TEXTS = ["a photo of a cat.", "An ASTRONAUT!", "naïve café &amp; 日本語", "word " * 100, ""]


def embed(channel: grpc.Channel, *inputs: inference_pb2.Input, model: str = "", version: int = 0):
    stub = inference_pb2_grpc.InferenceStub(channel)
    request = inference_pb2.EmbedRequest(
        inputs=list(inputs), model=common_pb2.ModelRef(name=model, version=version)
    )
    return stub.Embed(request, timeout=60)


def matrix(response: inference_pb2.EmbedResponse) -> np.ndarray:
    m = response.embeddings
    return np.frombuffer(m.data, "<f4").reshape(m.rows, m.cols)


def reference_images(tiny_openclip, images: list[bytes]) -> np.ndarray:
    import io

    model, preprocess, _, _ = tiny_openclip
    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images])
        out = model.encode_image(x)
    return torch.nn.functional.normalize(out, dim=-1).numpy()


def reference_texts(tiny_openclip, texts: list[str]) -> np.ndarray:
    model, _, tokenizer, _ = tiny_openclip
    with torch.no_grad():
        out = model.encode_text(tokenizer(texts))
    return torch.nn.functional.normalize(out, dim=-1).numpy()


def images_in_formats() -> list[bytes]:
    """Real photos as JPEG, PNG, WebP, BMP, GIF; grayscale, RGBA, palette and CMYK images."""
    astronaut, chelsea = photo("astronaut"), photo("chelsea")
    return [
        encode(astronaut, "JPEG", quality=90),
        encode(chelsea, "PNG"),
        encode(photo("coffee"), "WEBP", quality=90),
        encode(photo("rocket"), "BMP"),
        encode(Image.fromarray(chelsea).convert("P"), "GIF"),
        encode(photo("camera"), "PNG"),  # grayscale
        encode(photo("logo"), "PNG"),  # RGBA
        encode(Image.fromarray(astronaut).convert("CMYK"), "JPEG"),
        encode(photo("page"), "JPEG"),  # grayscale, wide
    ]


def test_image_embeddings_equal_open_clip(channel, tiny_openclip):
    images = images_in_formats()
    response = embed(channel, *(inference_pb2.Input(image=b) for b in images))
    assert (response.model, response.version) == ("tiny", 1)
    got = matrix(response)
    assert got.shape == (len(images), 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(got * reference_images(tiny_openclip, images), axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_text_embeddings_equal_open_clip(channel, tiny_openclip):
    response = embed(channel, *(inference_pb2.Input(text=t) for t in TEXTS))
    cosines = np.sum(matrix(response) * reference_texts(tiny_openclip, TEXTS), axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_mixed_batch_keeps_request_order(channel, tiny_openclip):
    image = encode(photo("chelsea"), "JPEG")
    inputs = [
        inference_pb2.Input(text="a cat"),
        inference_pb2.Input(image=image),
        inference_pb2.Input(text="a dog"),
    ]
    got = matrix(embed(channel, *inputs))
    np.testing.assert_allclose(got[1], reference_images(tiny_openclip, [image])[0], atol=1e-4)
    np.testing.assert_allclose(
        got[[0, 2]], reference_texts(tiny_openclip, ["a cat", "a dog"]), atol=1e-4
    )


def test_concurrent_clients_get_their_own_results_in_order(server, tiny_openclip):
    words = [f"text number {i}" for i in range(64)]
    expected = dict(zip(words, reference_texts(tiny_openclip, words), strict=True))
    errors: list[BaseException] = []

    def client(offset: int) -> None:
        try:
            with grpc.insecure_channel(server.address) as ch:
                for round_ in range(4):
                    mine = [words[(offset * 7 + round_ * 3 + k) % 64] for k in range(5)]
                    got = matrix(embed(ch, *(inference_pb2.Input(text=t) for t in mine)))
                    want = np.stack([expected[t] for t in mine])
                    np.testing.assert_allclose(got, want, atol=1e-4)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_embed_stream_answers_in_request_order(channel, tiny_openclip):
    stub = inference_pb2_grpc.InferenceStub(channel)
    batches = [[f"batch {b} item {i}" for i in range(b % 3 + 1)] for b in range(10)]
    requests = (
        inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text=t) for t in batch])
        for batch in batches
    )
    responses = list(stub.EmbedStream(requests, timeout=60))
    assert len(responses) == len(batches)
    for batch, response in zip(batches, responses, strict=True):
        np.testing.assert_allclose(
            matrix(response), reference_texts(tiny_openclip, batch), atol=1e-4
        )


def test_embed_stream_in_lockstep(channel):
    """A client that waits for each answer before sending the next request is served."""
    import queue

    stub = inference_pb2_grpc.InferenceStub(channel)
    outbox: queue.Queue = queue.Queue()

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    outbox.put(inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text="first")]))
    responses = stub.EmbedStream(requests(), timeout=30)
    assert next(responses).embeddings.rows == 1
    outbox.put(inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text="second")] * 2))
    assert next(responses).embeddings.rows == 2
    outbox.put(None)
    assert list(responses) == []


def test_embed_stream_reports_the_failing_request(channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    requests = [
        inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text="fine")]),
        inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(image=b"junk")]),
    ]
    responses = stub.EmbedStream(iter(requests), timeout=30)
    assert next(responses).embeddings.rows == 1
    with pytest.raises(grpc.RpcError) as info:
        next(responses)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_pinned_version_and_unknown_versions(channel):
    text = inference_pb2.Input(text="hello")
    assert embed(channel, text, model="tiny", version=1).version == 1
    with pytest.raises(grpc.RpcError) as info:
        embed(channel, text, model="tiny", version=7)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no version 7" in info.value.details() and "1" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        embed(channel, text, model="nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "tiny" in info.value.details()  # lists what exists


def _bomb() -> bytes:
    return encode(Image.new("1", (9000, 9000)), "PNG")  # 81 MP, a few kB


def _truncated() -> bytes:
    data = encode(photo("chelsea"), "JPEG")
    return data[: len(data) // 3]


BAD_INPUTS = [
    ("empty batch", [], "empty"),
    (
        "zero-byte image",
        [inference_pb2.Input(text="ok"), inference_pb2.Input(image=b"")],
        "input 1: image is empty",
    ),
    (
        "undecodable image",
        [inference_pb2.Input(image=b"not an image at all")],
        "input 0: image could not be decoded",
    ),
    (
        "truncated image",
        [inference_pb2.Input(text="ok"), inference_pb2.Input(image=_truncated())],
        "input 1: image could not be decoded",
    ),
    ("decompression bomb", [inference_pb2.Input(image=_bomb())], "input 0: image is 9000x9000"),
    (
        "neither image nor text",
        [inference_pb2.Input(text="ok"), inference_pb2.Input()],
        "input 1: has neither image nor text",
    ),
    ("too many inputs", [inference_pb2.Input(text="x")] * 1025, "1025 inputs is over the limit"),
    (
        "unsupported format",
        [inference_pb2.Input(image=encode(photo("camera"), "TIFF"))],
        "input 0: image format TIFF is not accepted",
    ),
]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [(i, m) for _, i, m in BAD_INPUTS],
    ids=[name for name, _, _ in BAD_INPUTS],
)
def test_bad_input_is_invalid_argument_and_server_keeps_serving(channel, server, inputs, message):
    with pytest.raises(grpc.RpcError) as info:
        embed(channel, *inputs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert server.alive()
    assert embed(channel, inference_pb2.Input(text="still here")).embeddings.rows == 1


def test_long_text_is_truncated_as_open_clip_does(channel, tiny_openclip):
    long = "a photo of a very long sentence " * 50
    got = matrix(embed(channel, inference_pb2.Input(text=long)))
    np.testing.assert_allclose(got, reference_texts(tiny_openclip, [long]), atol=1e-4)


def test_models_service(channel):
    stub = models_pb2_grpc.ModelsStub(channel)
    listed = stub.ListModels(models_pb2.ListModelsRequest(), timeout=10)
    assert listed.default_model == "tiny"
    (info,) = listed.models
    assert (info.name, info.kind, info.dim, info.serving_version) == ("tiny", "clip", 32, 1)
    assert set(info.modalities) == {common_pb2.MODALITY_IMAGE, common_pb2.MODALITY_TEXT}
    (version,) = info.versions
    assert version.state == models_pb2.VersionInfo.STATE_SERVING
    assert "CPUExecutionProvider" in version.providers
    assert version.image_size == 32 and version.context_length == 77
    assert version.image_parity >= 0.99999 and version.text_parity >= 0.99999
    assert stub.GetModel(models_pb2.GetModelRequest(name="tiny"), timeout=10) == info
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModel(models_pb2.GetModelRequest(name="missing"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Available models: tiny" in err.value.details()


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lens.v1.Inference", "lens.v1.Models"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = stub.ServerReflectionInfo(iter([request]), timeout=5)
    names = {s.name for s in response.list_services_response.service}
    assert {"lens.v1.Inference", "lens.v1.Models", "grpc.health.v1.Health"} <= names


def test_full_queue_is_resource_exhausted(tiny_repo):
    """A request that would overflow a tower's queue is refused whole; others still run."""
    proc = ServerProcess(
        tiny_repo, "--max-batch-size", "4", "--max-queue-size", "8", "--max-queue-delay-ms", "50"
    )
    try:
        with grpc.insecure_channel(proc.address) as ch:
            image = inference_pb2.Input(image=encode(photo("astronaut"), "JPEG"))
            with pytest.raises(grpc.RpcError) as info:
                embed(ch, *([image] * 9))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue full" in info.value.details()
            assert embed(ch, *([image] * 8)).embeddings.rows == 8
    finally:
        proc.stop()


def test_deadline_is_honoured(channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    image = inference_pb2.Input(image=encode(photo("astronaut"), "PNG"))
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(inference_pb2.EmbedRequest(inputs=[image] * 64), timeout=0.001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert embed(channel, image).embeddings.rows == 1


def test_server_without_models_answers_clearly(tmp_path):
    proc = ServerProcess(tmp_path)
    try:
        with grpc.insecure_channel(proc.address) as ch:
            with pytest.raises(grpc.RpcError) as info:
                embed(ch, inference_pb2.Input(text="x"))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "no default model" in info.value.details()
    finally:
        proc.stop()
