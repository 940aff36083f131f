"""KServe v2 over HTTP, with Triton's own client (`tritonclient.http`): health, metadata,
inference as binary and as JSON tensors (the same vectors as lens.v1's Embed), the model
repository extension, and every refusal in KServe's `{"error": "..."}` shape, after which
the server still serves."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from lens.v1 import inference_pb2
from tritonclient.utils import InferenceServerException

from lens_client import LensClient
from lens_server.vectors import cosine_rows
from tests.conftest import ServerProcess, encode, photo
from tests.server.test_deploy import add_version, second_checkpoint  # noqa: F401 (a fixture)
from tests.server.test_grpc import embed, matrix

PHOTOS = ("astronaut", "chelsea", "coffee")
TEXTS = ["a photo of a cat", "a cup of coffee"]
INFER = "/v2/models/tiny/infer"
HEADER = "Inference-Header-Content-Length"
SMALL = base64.b64encode(encode(np.zeros((8, 8, 3), np.uint8))).decode()  # a valid PNG


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [encode(photo(n), "JPEG", quality=90) for n in PHOTOS]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    assert server.http
    with triton.InferenceServerClient(url=server.http.removeprefix("http://")) as c:
        yield c


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    assert server.http
    with httpx.Client(base_url=server.http, timeout=60) as c:
        yield c


def reference(server: ServerProcess, images: list[bytes], texts: list[str]) -> np.ndarray:
    """lens.v1's Embed of the same inputs, images first."""
    inputs = [inference_pb2.Input(image=i) for i in images]
    inputs += [inference_pb2.Input(text=t) for t in texts]
    with grpc.insecure_channel(server.address) as channel:
        return matrix(embed(channel, *inputs, model="tiny"))


def bytes_input(name: str, items: list[bytes] | list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_), binary_data=binary)
    return tensor


def refused(response: httpx.Response, status: int, *words: str) -> str:
    """The message of a KServe error answer, once its status and shape are checked."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for word in words:
        assert word in body["error"], body["error"]
    return body["error"]


def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + b"".join(chunks), {HEADER: str(len(text))}


def serialized(*items: bytes) -> bytes:
    """BYTES elements as Triton's clients send them: a 4-byte little-endian length each."""
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- health and metadata ---------------------------------------------------------------------


def test_health_and_readiness(client: triton.InferenceServerClient):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready("tiny", "9")


def test_server_and_model_metadata(client: triton.InferenceServerClient):
    server = client.get_server_metadata()
    assert server["name"] == "lens" and server["version"]
    assert {"binary_tensor_data", "model_repository"} <= set(server["extensions"])
    expected = {
        "name": "tiny",
        "versions": ["1"],
        "platform": "lens",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 32]}],
    }
    assert client.get_model_metadata("tiny") == expected
    assert client.get_model_metadata("tiny", "1") == expected


def test_unknown_model_metadata_lists_the_models(client: triton.InferenceServerClient):
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("no-such-model")
    assert raised.value.status() == "404"
    assert "tiny" in raised.value.message()


# -- inference -------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_gives_embeds_vectors(client, server, images, binary):
    """Images and texts in one request: the rows are Embed's, images first, whatever the
    order of the tensors (the text tensor is sent first here)."""
    image_data = images if binary else [b64(i) for i in images]
    inputs = [bytes_input("text", TEXTS, binary), bytes_input("image", image_data, binary)]
    outputs = [triton.InferRequestedOutput("embedding", binary_data=binary)]
    result = client.infer("tiny", inputs, outputs=outputs, request_id="r-1")
    vectors = result.as_numpy("embedding")
    assert vectors.dtype == np.float32 and vectors.shape == (len(images) + len(TEXTS), 32)
    assert np.all(cosine_rows(vectors, reference(server, images, TEXTS)) >= 0.99999)
    response = result.get_response()
    assert response["model_name"] == "tiny" and response["model_version"] == "1"
    assert response["id"] == "r-1"


def test_infer_one_kind_with_a_version_and_default_outputs(client, server, images):
    """No outputs named: Triton's client asks for every output in binary."""
    texts = client.infer("tiny", [bytes_input("text", TEXTS, True)], model_version="1")
    assert np.all(cosine_rows(texts.as_numpy("embedding"), reference(server, [], TEXTS)) > 0.99999)
    only = client.infer("tiny", [bytes_input("image", images[:1], True)])
    assert np.all(
        cosine_rows(only.as_numpy("embedding"), reference(server, images[:1], [])) > 0.99999
    )


def test_a_plain_json_request(api: httpx.Client, server: ServerProcess, images: list[bytes]):
    """As KServe's own clients send it: JSON, a JSON answer with flat data."""
    body = {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(images[0])]},
            {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a cat"]},
        ]
    }
    response = api.post(INFER, json=body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "embedding" and output["shape"] == [2, 32]
    vectors = np.array(output["data"], np.float32).reshape(2, 32)
    assert np.all(cosine_rows(vectors, reference(server, images[:1], ["a cat"])) > 0.99999)


# -- refusals --------------------------------------------------------------------------------


def text_tensor(*texts: str, **fields) -> dict:
    return {
        "name": "text",
        "datatype": "BYTES",
        "shape": [len(texts)],
        "data": list(texts),
    } | fields


BAD_JSON = [
    ("/v2/models/nope/infer", {"inputs": [text_tensor("a")]}, 404, ["nope", "tiny"]),
    ("/v2/models/tiny/versions/7/infer", {"inputs": [text_tensor("a")]}, 404, ["7", "1"]),
    ("/v2/models/tiny/versions/x/infer", {"inputs": [text_tensor("a")]}, 404, ["'x'"]),
    (INFER, {"inputs": [text_tensor("a", name="audio")]}, 400, ["'audio'", "image, text"]),
    (INFER, {"inputs": [text_tensor("a", datatype="FP32")]}, 400, ["FP32", "BYTES"]),
    (INFER, {"inputs": [text_tensor("a", shape=[1, 1])]}, 400, ["[1, 1]", "[n]"]),
    (INFER, {"inputs": [text_tensor("a", shape=[2])]}, 400, ["[2]", "1 element"]),
    (INFER, {"inputs": [text_tensor("a", data=[3])]}, 400, ["string"]),
    (INFER, {"inputs": [text_tensor("a"), text_tensor("b")]}, 400, ["twice"]),
    (INFER, {"inputs": [text_tensor()]}, 400, ["no elements"]),
    (INFER, {"inputs": []}, 400, ["no elements"]),
    (INFER, {"inputs": [text_tensor("a", data=None)]}, 400, ["no data"]),
    (INFER, {"inputs": [text_tensor("a")], "outputs": [{"name": "logits"}]}, 400, ["'logits'"]),
    (
        INFER,
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]},
        400,
        ["image[0]", "base64"],
    ),
    (
        INFER,
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [2], "data": [SMALL, b64(b"x")]}
            ]
        },
        400,
        ["image[1]"],
    ),
    (INFER, {"inputs": [text_tensor("a", shape=[1.5])]}, 400, ["shape"]),
    (INFER, {"input": [text_tensor("a")]}, 400, ["inputs"]),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD_JSON)
def test_bad_json_requests(api, path, body, status, words):
    refused(api.post(path, json=body), status, *words)


def test_too_many_elements(api: httpx.Client):
    body = {"inputs": [text_tensor(*["a"] * 1025)]}
    refused(api.post(INFER, json=body), 400, "1025", "1024")
    header, headers = binary_body(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [10**9],
                    "parameters": {"binary_data_size": 4},
                }
            ]
        },
        serialized(b""),
    )
    refused(api.post(INFER, content=header, headers=headers), 400, "over the limit")


def test_malformed_json(api: httpx.Client):
    refused(
        api.post(INFER, content=b'{"inputs": [', headers={"content-type": "application/json"}),
        400,
        "JSON",
    )
    refused(api.post(INFER, content=b""), 400, "JSON")


def test_unsupported_content_type(api: httpx.Client):
    refused(
        api.post(INFER, content=b"x", headers={"content-type": "text/plain"}), 415, "octet-stream"
    )


def binary_text(
    size_delta: int = 0, extra: bytes = b"", texts=(b"a", b"bc")
) -> tuple[bytes, dict[str, str]]:
    data = serialized(*texts)
    header = {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [len(texts)],
                "parameters": {"binary_data_size": len(data) + size_delta},
            }
        ]
    }
    return binary_body(header, data, extra)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (binary_text(size_delta=5), ["binary_data_size", "left"]),
        (binary_text(extra=b"\x00" * 3), ["add up to 11", "14 follow"]),
        (binary_text(size_delta=-1), ["element 1 declares 2 bytes", "only 1"]),
        (binary_text(texts=(b"\xff\xfe",)), ["text[0]", "UTF-8"]),
    ],
    ids=["over", "under", "cut-element", "not-utf8"],
)
def test_binary_data_that_does_not_add_up(api, body, words):
    content, headers = body
    headers = {**headers, "content-type": "application/octet-stream"}
    refused(api.post(INFER, content=content, headers=headers), 400, *words)


def test_header_length_past_the_body(api: httpx.Client):
    content, _ = binary_text()
    refused(api.post(INFER, content=content, headers={HEADER: str(len(content) + 1)}), 400, HEADER)
    refused(api.post(INFER, content=content, headers={HEADER: "-3"}), 400, HEADER)


def test_undecodable_image_through_the_client(client, images):
    """Named as the client knows it: the tensor and the element's index in it."""
    inputs = [bytes_input("image", [images[0], b"not an image"], True)]
    with pytest.raises(InferenceServerException) as raised:
        client.infer("tiny", inputs)
    assert raised.value.status() == "400"
    assert "image[1]" in raised.value.message()


def test_still_serving_after_the_refusals(client, server, images):
    assert client.is_server_live() and client.is_server_ready()
    result = client.infer("tiny", [bytes_input("image", images, True)])
    assert np.all(
        cosine_rows(result.as_numpy("embedding"), reference(server, images, [])) > 0.99999
    )


# -- the model repository extension -----------------------------------------------------------


@pytest.fixture(scope="module")
def private(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own: these tests unload and load its model."""
    repo = Path(shutil.copytree(tiny_repo, tmp_path_factory.mktemp("kserve-http") / "repo"))
    proc = ServerProcess(repo, "--max-batch-size", "8")
    yield proc
    proc.stop()


def test_repository_index_unload_and_load(private: ServerProcess):
    assert private.http
    with triton.InferenceServerClient(url=private.http.removeprefix("http://")) as client:
        assert client.get_model_repository_index() == [
            {"name": "tiny", "version": "1", "state": "READY", "reason": ""}
        ]
        client.unload_model("tiny")
        assert not client.is_model_ready("tiny")
        (entry,) = client.get_model_repository_index()
        assert entry["state"] == "UNAVAILABLE"
        with httpx.Client(base_url=private.http) as api:
            index = api.post("/v2/repository/index", json={"ready": True})
            assert index.status_code == 200 and index.json() == []
        client.load_model("tiny")
        assert client.is_model_ready("tiny")
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("tiny", config='{"backend": "onnxruntime"}')
        assert raised.value.status() == "400" and "config" in raised.value.message()
        with pytest.raises(InferenceServerException) as raised:
            client.unload_model("no-such-model")
        assert raised.value.status() == "404"
        result = client.infer("tiny", [bytes_input("text", TEXTS, True)])
        assert result.as_numpy("embedding").shape == (2, 32)


# -- a deploy under load ----------------------------------------------------------------------


def test_a_deploy_under_load_fails_no_request(
    tiny_repo: Path,
    tmp_path: Path,
    second_checkpoint: Path,  # noqa: F811 (the fixture imported above)
):
    """Three tritonclient.http clients infer while version 2 is deployed: every request is
    answered, and each client sees version 1 and then version 2, never back."""
    repo = Path(shutil.copytree(tiny_repo, tmp_path / "repo"))
    proc = ServerProcess(repo, "--max-batch-size", "8", "--poll-s", "0")
    assert proc.http
    url = proc.http.removeprefix("http://")
    image = encode(photo("rocket"), "JPEG", quality=85)
    errors: list[str] = []
    seen: dict[int, list[str]] = {}
    answered = threading.Barrier(4)
    stop = threading.Event()

    def run(index: int) -> None:
        with triton.InferenceServerClient(url=url, network_timeout=30) as client:
            inputs = [bytes_input("image", [image], True), bytes_input("text", ["a"], False)]
            first = True
            while not stop.is_set():
                try:
                    result = client.infer("tiny", inputs)
                    assert result.as_numpy("embedding").shape == (2, 32)
                    seen.setdefault(index, []).append(result.get_response()["model_version"])
                except Exception as e:  # every failure is the test's
                    errors.append(repr(e))
                if first:
                    first = False
                    answered.wait(60)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    try:
        for thread in threads:
            thread.start()
        answered.wait(60)
        assert add_version(repo, second_checkpoint) == 2
        with LensClient(proc.address) as lens:
            lens.reload_models()
            assert lens.deploy("tiny", 2)["version"] == 2
        # Answers from version 2 reach every client before the load stops.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            seen.get(i, ["1"])[-1] == "2" for i in range(3)
        ):
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        proc.stop()
    assert errors == []
    for versions in seen.values():
        assert versions[0] == "1" and versions[-1] == "2"
        assert versions == sorted(versions)  # moved once, never back
