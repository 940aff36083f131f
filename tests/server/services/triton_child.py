"""What the child process of tests/server/services/test_kserve.py runs: tritonclient.grpc,
unchanged, against a lens server. Kept apart from the tests, and importing tritonclient only
inside each function, so that the tests can name these functions without loading
tritonclient's copy of the `inference` protos beside lens's (protobuf refuses a name defined
twice in one process)."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2


def _client(address: str) -> Any:
    import tritonclient.grpc as triton

    return triton.InferenceServerClient(url=address)


def _error(e: Exception) -> tuple[str, str]:
    return (str(e.status()), e.message()) if hasattr(e, "status") else ("", repr(e))


def health(address: str) -> dict[str, Any]:
    from tritonclient.utils import InferenceServerException

    client = _client(address)
    found: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model": client.is_model_ready("tiny"),
        "version": client.is_model_ready("tiny", "1"),
        "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata("tiny", as_json=True),
        "metadata_1": client.get_model_metadata("tiny", "1", as_json=True),
    }
    for key, call in {
        "unknown": lambda: client.is_model_ready("no-such-model"),
        "config": lambda: client.get_model_config("tiny"),
        "statistics": lambda: client.get_inference_statistics("tiny"),
    }.items():
        try:
            found[key] = call()
        except InferenceServerException as e:
            found[key] = _error(e)
    client.close()
    return found


def infer(
    address: str, tensors: list[tuple[str, list[bytes]]], version: str = ""
) -> tuple[np.ndarray, dict[str, Any]] | tuple[str, str]:
    """`infer` with a BYTES InferInput per (name, elements): the embedding and the answer's
    metadata, or the error's (status, message)."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    inputs = []
    for name, items in tensors:
        tensor = triton.InferInput(name, [len(items)], "BYTES")
        tensor.set_data_from_numpy(np.array(items, dtype=np.object_))
        inputs.append(tensor)
    client = _client(address)
    try:
        result = client.infer(
            "tiny", inputs, model_version=version, request_id="r-1",
            outputs=[triton.InferRequestedOutput("embedding")],
        )  # fmt: skip
    except InferenceServerException as e:
        return _error(e)
    finally:
        client.close()
    answer = result.get_response(as_json=True)
    return result.as_numpy("embedding"), {
        k: answer.get(k) for k in ("model_name", "model_version", "id")
    }


def stream(address: str, requests: list[list[tuple[str, list[bytes]]]]) -> list[Any]:
    """Requests on one ModelStreamInfer stream: each answer's embedding or error message."""
    import tritonclient.grpc as triton

    answers: queue.Queue = queue.Queue()
    client = _client(address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for tensors in requests:
        inputs = []
        for name, items in tensors:
            tensor = triton.InferInput(name, [len(items)], "BYTES")
            tensor.set_data_from_numpy(np.array(items, dtype=np.object_))
            inputs.append(tensor)
        client.async_stream_infer("tiny", inputs)
    found = []
    for _ in requests:
        result, error = answers.get(timeout=60)
        found.append(error.message() if error else result.as_numpy("embedding"))
    client.stop_stream()
    client.close()
    return found


def repository(address: str) -> dict[str, Any]:
    from tritonclient.utils import InferenceServerException

    client = _client(address)
    found: dict[str, Any] = {"index": client.get_model_repository_index(as_json=True)}
    client.unload_model("tiny")
    found["ready_after_unload"] = client.is_model_ready("tiny")
    found["index_after_unload"] = client.get_model_repository_index(as_json=True)
    client.load_model("tiny")
    found["ready_after_load"] = client.is_model_ready("tiny")
    try:
        client.unload_model("no-such-model")
    except InferenceServerException as e:
        found["unknown"] = _error(e)
    client.close()
    return found


def load(address: str, image: bytes, started: str, stop: str) -> dict[str, Any]:
    """3 clients calling infer until the file `stop` exists (`started` is written once every
    client has an answer): the versions each saw, and every failure."""
    import tritonclient.grpc as triton

    errors: list[str] = []
    seen: dict[int, list[str]] = {}
    answered = threading.Barrier(4)

    def run(index: int) -> None:
        client = triton.InferenceServerClient(url=address)
        image_input = triton.InferInput("image", [1], "BYTES")
        image_input.set_data_from_numpy(np.array([image], dtype=np.object_))
        text_input = triton.InferInput("text", [1], "BYTES")
        text_input.set_data_from_numpy(np.array([b"a"], dtype=np.object_))
        first = True
        while not Path(stop).exists():
            try:
                result = client.infer("tiny", [image_input, text_input], client_timeout=30)
                assert result.as_numpy("embedding").shape == (2, 32)
                seen.setdefault(index, []).append(result.get_response().model_version)
            except Exception as e:  # every failure is the test's
                errors.append(repr(e))
            if first:
                first = False
                answered.wait(60)
        client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    answered.wait(60)
    Path(started).touch()
    for thread in threads:
        thread.join(120)
    return {"errors": errors, "seen": seen}


def descriptor() -> bytes:
    """tritonclient's grpc_service.proto, as a serialized FileDescriptorProto."""
    from tritonclient.grpc import service_pb2

    proto = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto.SerializeToString()
