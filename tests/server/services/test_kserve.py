"""KServe v2's GRPCInferenceService, on the same port as lens.v1: with Triton's own client
(`tritonclient.grpc`) the same vectors as lens.v1's Embed; the protocol's field numbers as
tritonclient's copy of it has them; refusals as gRPC statuses; the stream; the repository;
a deploy under load with no failed request; UNIMPLEMENTED for what lens does not serve.

tritonclient.grpc runs in a child process (`triton`): it carries its own copy of the
`inference` messages, which protobuf cannot hold in one process beside lens's (that this
module and in-process servers elsewhere in the suite load). The checks are made here.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from lens.v1 import inference_pb2

from lens_client import LensClient
from lens_server.vectors import cosine_rows
from tests.conftest import ServerProcess, encode, photo
from tests.server.services import triton_child as child
from tests.server.test_deploy import add_version, second_checkpoint  # noqa: F401 (a fixture)
from tests.server.test_grpc import embed, matrix

PHOTOS = ("astronaut", "chelsea", "coffee")
TEXTS = ["a photo of a cat", "a cup of coffee"]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton() -> Iterator[Pool]:
    """A child process for tritonclient.grpc (see the module's docstring)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        yield pool


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [encode(photo(n), "JPEG", quality=90) for n in PHOTOS]


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def reference(server: ServerProcess, images: list[bytes], texts: list[str]) -> np.ndarray:
    """lens.v1's Embed of the same inputs, images first."""
    inputs = [inference_pb2.Input(image=i) for i in images]
    inputs += [inference_pb2.Input(text=t) for t in texts]
    with grpc.insecure_channel(server.address) as channel:
        return matrix(embed(channel, *inputs, model="tiny"))


def same(vectors: np.ndarray, expected: np.ndarray) -> bool:
    return vectors.shape == expected.shape and bool(
        np.all(cosine_rows(vectors, expected) >= 0.99999)
    )


def serialized(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


# -- the protocol ----------------------------------------------------------------------------


def _fields(message: descriptor_pb2.DescriptorProto) -> dict[str, Any]:
    return {
        "fields": {
            f.name: (
                f.number,
                f.type,
                f.label,
                f.type_name,
                f.oneof_index if f.HasField("oneof_index") else None,
            )
            for f in message.field
        },
        "nested": {n.name: _fields(n) for n in message.nested_type},
        "oneofs": [o.name for o in message.oneof_decl],
    }


def test_messages_and_methods_are_tritons(triton: Pool):
    """Every message lens declares has Triton's name, fields, numbers and types; every method
    lens serves is Triton's, with its request, response and streaming."""
    theirs = descriptor_pb2.FileDescriptorProto.FromString(triton.apply(child.descriptor))
    ours = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(ours)
    assert ours.package == theirs.package == "inference"
    their_messages = {m.name: m for m in theirs.message_type}
    for message in ours.message_type:
        assert message.name in their_messages, message.name
        assert _fields(message) == _fields(their_messages[message.name]), message.name
    (service,) = ours.service
    (their_service,) = theirs.service
    assert service.name == their_service.name == "GRPCInferenceService"
    their_methods = {m.name: m for m in their_service.method}
    for method in service.method:
        other = their_methods[method.name]
        assert (method.input_type, method.output_type) == (other.input_type, other.output_type)
        assert (method.client_streaming, method.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        )
    served = {m.name for m in service.method}
    assert {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    } <= served


def test_reflection_lists_the_service(server: ServerProcess):
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=30)
    names = {s.name for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "lens.v1.Inference"} <= names


# -- with tritonclient.grpc ------------------------------------------------------------------


def test_health_metadata_and_unimplemented(triton: Pool, server: ServerProcess):
    found = triton.apply(child.health, (server.address,))
    assert found["live"] and found["ready"] and found["model"] and found["version"]
    assert found["server"]["name"] == "lens"
    assert "binary_tensor_data" in found["server"]["extensions"]
    expected = {
        "name": "tiny",
        "versions": ["1"],
        "platform": "lens",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": ["-1"]},
            {"name": "text", "datatype": "BYTES", "shape": ["-1"]},
        ],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": ["-1", "32"]}],
    }
    assert found["metadata"] == found["metadata_1"] == expected
    status, message = found["unknown"]
    assert status == "StatusCode.NOT_FOUND" and "tiny" in message
    assert found["config"][0] == found["statistics"][0] == "StatusCode.UNIMPLEMENTED"


def test_infer_gives_embeds_vectors(triton: Pool, server: ServerProcess, images: list[bytes]):
    texts = [t.encode() for t in TEXTS]
    vectors, answer = triton.apply(
        child.infer, (server.address, [("text", texts), ("image", images)])
    )
    assert vectors.dtype == np.float32
    assert same(vectors, reference(server, images, TEXTS))
    assert answer == {"model_name": "tiny", "model_version": "1", "id": "r-1"}
    only, _ = triton.apply(child.infer, (server.address, [("image", images[:1])], "1"))
    assert same(only, reference(server, images[:1], []))


def test_the_stream_answers_in_order_and_goes_on_after_an_error(triton, server, images):
    answers = triton.apply(
        child.stream,
        (server.address, [[("text", [b"a cat"])], [("audio", [b"x"])], [("image", images[:2])]]),
    )
    assert same(answers[0], reference(server, [], ["a cat"]))
    assert "'audio'" in answers[1]
    assert same(answers[2], reference(server, images[:2], []))


def test_an_undecodable_image_through_the_client(triton: Pool, server: ServerProcess, images):
    status, message = triton.apply(child.infer, (server.address, [("image", [images[0], b"no"])]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "image[1]" in message


# -- refusals, with lens's copy of the protocol -----------------------------------------------


def tensor(name: str = "text", datatype: str = "BYTES", shape=None, items=(b"a",)):
    return pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=[len(items)] if shape is None else shape
    ), serialized(*items)


def request(*tensors, model: str = "tiny", version: str = "", raw=None) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=[t for t, _ in tensors],
        raw_input_contents=[r for _, r in tensors] if raw is None else raw,
    )


def test_typed_contents_give_embeds_vectors(stub, server, images):
    """`contents.bytes_contents` instead of raw contents, as KServe's own clients send."""
    message = pb.ModelInferRequest(
        model_name="tiny",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="image",
                datatype="BYTES",
                shape=[2],
                contents=pb.InferTensorContents(bytes_contents=images[:2]),
            ),
            pb.ModelInferRequest.InferInputTensor(
                name="text",
                datatype="BYTES",
                shape=[1],
                contents=pb.InferTensorContents(bytes_contents=[b"a cat"]),
            ),
        ],
    )
    answer = stub.ModelInfer(message, timeout=60)
    (output,) = answer.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("embedding", "FP32", [3, 32])
    vectors = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(3, 32)
    assert same(vectors, reference(server, images[:2], ["a cat"]))


TOO_MANY = [b"a"] * 1025
BAD = [
    (request(tensor(), model="nope"), "NOT_FOUND", ["nope", "tiny"]),
    (request(tensor(), version="7"), "NOT_FOUND", ["7"]),
    (request(tensor(), version="v1"), "NOT_FOUND", ["'v1'"]),
    (request(tensor(name="audio")), "INVALID_ARGUMENT", ["'audio'", "image, text"]),
    (request(tensor(datatype="FP32")), "INVALID_ARGUMENT", ["FP32"]),
    (request(tensor(shape=[1, 1])), "INVALID_ARGUMENT", ["[1, 1]"]),
    (request(tensor(shape=[2])), "INVALID_ARGUMENT", ["1 element", "2"]),
    (request(tensor(items=())), "INVALID_ARGUMENT", ["no elements"]),
    (request(), "INVALID_ARGUMENT", ["no elements"]),
    (request(tensor(items=TOO_MANY)), "INVALID_ARGUMENT", ["1025", "1024"]),
    (request(tensor(), tensor()), "INVALID_ARGUMENT", ["twice"]),
    (request(tensor(), raw=[b"", b""]), "INVALID_ARGUMENT", ["2 entries", "1 inputs"]),
    (request(tensor(), raw=[b"\x05\x00\x00\x00ab"]), "INVALID_ARGUMENT", ["declares 5 bytes"]),
    (request(tensor(), raw=[serialized(b"a") + b"\x00"]), "INVALID_ARGUMENT", ["1 bytes follow"]),
    (request(tensor(items=(b"\xff",))), "INVALID_ARGUMENT", ["text[0]", "UTF-8"]),
    (request(tensor(name="image", items=(b"not an image",))), "INVALID_ARGUMENT", ["image[0]"]),
]


@pytest.mark.parametrize(("message", "code", "words"), BAD)
def test_bad_requests(stub, message, code, words):
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(message, timeout=60)
    assert raised.value.code().name == code, raised.value.details()
    for word in words:
        assert word in raised.value.details(), raised.value.details()


def test_an_unknown_output_and_readiness_of_what_does_not_exist(stub):
    message = request(tensor())
    message.outputs.add(name="logits")
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(message, timeout=60)
    assert (
        raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "'logits'" in raised.value.details()
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelReady(pb.ModelReadyRequest(name="tiny", version="9"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_still_serving_after_the_refusals(triton, server, images):
    vectors, _ = triton.apply(child.infer, (server.address, [("image", images)]))
    assert same(vectors, reference(server, images, []))


# -- the repository, deploys, and KServe turned off --------------------------------------------


@pytest.fixture()
def private(tiny_repo: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    """A server of its own over a copy of the repository: these tests change what it serves."""
    repo = Path(shutil.copytree(tiny_repo, tmp_path / "repo"))
    proc = ServerProcess(repo, "--max-batch-size", "8", "--poll-s", "0")
    yield proc, repo
    proc.stop()


def test_repository_index_unload_and_load(triton: Pool, private):
    proc, _ = private
    found = triton.apply(child.repository, (proc.address,))
    assert found["index"] == {"models": [{"name": "tiny", "version": "1", "state": "READY"}]}
    assert not found["ready_after_unload"]
    (entry,) = found["index_after_unload"]["models"]
    assert entry["state"] == "UNAVAILABLE"
    assert found["ready_after_load"]
    assert found["unknown"][0] == "StatusCode.NOT_FOUND"


def test_a_deploy_under_load_fails_no_request(triton, private, second_checkpoint, tmp_path):  # noqa: F811
    proc, repo = private
    started, stop = tmp_path / "started", tmp_path / "stop"
    image = encode(photo("rocket"), "JPEG", quality=85)
    load = triton.apply_async(child.load, (proc.address, image, str(started), str(stop)))
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the clients never got an answer"
    assert add_version(repo, second_checkpoint) == 2
    with LensClient(proc.address) as client:
        client.reload_models()
        time.sleep(1)
        assert client.deploy("tiny", 2)["version"] == 2
    time.sleep(1.5)
    stop.touch()
    found = load.get(120)
    assert found["errors"] == []
    for versions in found["seen"].values():
        assert versions[0] == "1" and versions[-1] == "2"
        assert versions == sorted(versions)  # moved once, never back


def test_kserve_can_be_turned_off(tiny_repo: Path):
    proc = ServerProcess(tiny_repo, "--compat", "")
    try:
        with grpc.insecure_channel(proc.address) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                    pb.ServerLiveRequest(), timeout=30
                )
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert httpx.get(f"{proc.http}/v2/health/live", timeout=30).status_code == 404
    finally:
        proc.stop()


@pytest.mark.slow
def test_the_benchmark_runs(tmp_path: Path):
    """bench/kserve.py, Triton's clients against Embed, runs end to end (tiny model)."""
    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "kserve.json"
    result = subprocess.run(
        [sys.executable, "kserve.py", "--tiny", "--out", str(out)],
        cwd=root / "bench",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["targets"]) <= set(report["figures"])
    rates = [v for k, v in report["figures"].items() if k.endswith("_per_s")]
    assert len(rates) == 6 and all(r > 0 for r in rates)
    assert set(report["latency_single_text"]) == {"embed", "kserve_grpc", "kserve_http"}
