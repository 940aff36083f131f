"""Triton's HTTP encodings of KServe v2 tensors, for `lens_server.http.kserve`: an inference
request's JSON header and binary data → the core's `InputTensor`s, and `Inferred` → the
answer's bytes.

Binary-data extension: the body is a JSON header of `Inference-Header-Content-Length` bytes,
then the bytes of each input whose parameters give a `binary_data_size`, in input order (a
BYTES element: a 4-byte little-endian length, then its bytes); the sizes must add up to what
follows the header. In JSON, a text is a string and an image is base64 (or a data URI). The
answer is binary where the request asks (the output's `binary_data`, else the request's
`binary_data_output`), JSON otherwise.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from lens_server.core.kserve import (
    BYTES,
    FP32,
    OUTPUT,
    Inferred,
    InputTensor,
    check_count,
    check_parameters,
    split_bytes,
)
from lens_server.errors import InvalidInput
from lens_server.http.codec import image_bytes
from lens_server.http.errors import validation_message

HEADER_LENGTH = "Inference-Header-Content-Length"
M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """`body` (JSON) as `model`; InvalidInput naming each bad field, or the JSON's fault."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise InvalidInput(validation_message(RequestValidationError(e.errors()))) from None


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = Field(default=None, description="Row-major; texts as strings, images base64.")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InferInput]
    outputs: list[RequestedOutput] = Field(default_factory=list)


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic schema with its `$defs` written in place (the route reads its body itself,
    so FastAPI does not add InferRequest's parts to the document's components)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def read_request(
    body: bytes, header_length: str | None, limit: int
) -> tuple[InferRequest, list[InputTensor]]:
    """The request's JSON header and its inputs, binary ones cut from what follows it."""
    header, rest = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"{HEADER_LENGTH} is {header_length!r}: give the JSON header's length in "
                f"bytes, at most the body's {len(body)}"
            )
        header, rest = body[: int(header_length)], body[int(header_length) :]
    request = parse(InferRequest, header)
    tensors, offset = [], 0
    for tensor in request.inputs:
        check_parameters(tensor.parameters, f"input {tensor.name!r}")
        size = tensor.parameters.get("binary_data_size")
        if size is None:
            data = _json_data(tensor)
        elif not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {tensor.name!r}: binary_data_size must be a count of bytes")
        elif tensor.data is not None:
            raise InvalidInput(f"input {tensor.name!r}: give data or binary_data_size, not both")
        elif offset + size > len(rest):
            raise InvalidInput(
                f"input {tensor.name!r}: binary_data_size is {size}, but only "
                f"{len(rest) - offset} bytes of binary data are left for it"
            )
        else:
            chunk, offset = rest[offset : offset + size], offset + size
            data = _binary_data(tensor, chunk, limit)
        tensors.append(InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), data))
    if offset != len(rest):
        raise InvalidInput(
            f"the inputs' binary_data_size add up to {offset} bytes, but {len(rest)} follow "
            "the JSON header"
        )
    return request, tensors


def _binary_data(tensor: InferInput, chunk: bytes, limit: int) -> list[bytes | str]:
    if tensor.datatype != BYTES:
        return []  # refused by its datatype
    count = check_count(tensor.shape, tensor.name, limit)
    return list(split_bytes(chunk, count, f"input {tensor.name!r}"))


def _json_data(tensor: InferInput) -> list[bytes | str]:
    if tensor.data is None:
        raise InvalidInput(
            f"input {tensor.name!r} has no data: give `data`, or `binary_data_size` and the "
            "bytes after the JSON header"
        )
    if tensor.datatype != BYTES:
        return []  # refused by its datatype
    flat: list[Any] = []
    pending = [tensor.data] if not isinstance(tensor.data, list) else list(reversed(tensor.data))
    while pending:  # nested lists, row-major
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(reversed(item))
        else:
            flat.append(item)
    for index, item in enumerate(flat):
        if not isinstance(item, str):
            raise InvalidInput(
                f"input {tensor.name}[{index}]: a BYTES element in JSON is a string, "
                f"not {type(item).__name__}"
            )
    if tensor.name == "image":  # in JSON, an image is base64 of its file
        return [image_bytes(s, f"input image[{i}]") for i, s in enumerate(flat)]
    return flat


def outputs_of(request: InferRequest) -> tuple[list[str], bool]:
    """The outputs asked for and whether they go binary (the output's `binary_data`, else
    the request's `binary_data_output`)."""
    binary = request.parameters.get("binary_data_output", False) is True
    for output in request.outputs:
        check_parameters(output.parameters, f"output {output.name!r}")
        binary = output.parameters.get("binary_data", binary) is True
    return [o.name for o in request.outputs], binary


def encode_answer(inferred: Inferred, request_id: str, binary: bool) -> Response:
    vectors = inferred.vectors.astype("<f4", copy=False)
    output: dict[str, Any] = {"name": OUTPUT, "datatype": FP32, "shape": list(vectors.shape)}
    raw = b""
    if binary:
        raw = vectors.tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = vectors.ravel().tolist()
    answer: dict[str, Any] = {"model_name": inferred.model, "model_version": inferred.version}
    if request_id:
        answer["id"] = request_id
    answer["outputs"] = [output]
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not binary:
        return Response(header, media_type="application/json")
    return Response(
        header + raw,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
