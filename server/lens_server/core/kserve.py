"""KServe v2 (the Open Inference Protocol) over the core: what its requests mean for lens,
apart from the transport they came by (`lens_server.http.kserve`, `lens_server.services.kserve`).

A lens model seen through the protocol has two inputs, `image` (BYTES, shape [-1]: encoded
image files) and `text` (BYTES, [-1]: UTF-8), as its towers allow, either or both in one
request, and one output, `embedding` (FP32, [-1, dim]): one row per element, images first,
then texts, each in tensor order — as `lens.v1.Inference/Embed` orders them. Versions are
lens's, written as strings; a model is ready while it has a serving version, a version while
it is loaded (serving, or kept beside the serving one).

The transports decode their encodings (JSON, Triton's binary-data extension, protobuf
contents or raw contents) into `InputTensor`s; everything after that is checked here, once.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from lens_server.core.core import Core
from lens_server.core.models import ModelInfo
from lens_server.errors import InvalidInput, LensError, NotFound, available
from lens_server.model import Input
from lens_server.registry import State, VersionStatus

PLATFORM = "lens"
BYTES = "BYTES"
FP32 = "FP32"
OUTPUT = "embedding"
MODALITIES = ("image", "text")
# What lens implements of the protocol's extensions (Triton's names).
EXTENSIONS = ("binary_tensor_data", "model_repository", "parameters")
_LOADED = (State.READY, State.SERVING)
# A version's state as Triton's repository index names it.
_INDEX_STATE = {
    State.SERVING: "READY",
    State.READY: "READY",
    State.LOADING: "LOADING",
    State.AVAILABLE: "UNAVAILABLE",
    State.FAILED: "UNAVAILABLE",
}
# Parameters of extensions lens does not implement → what to tell the client.
_UNSUPPORTED = {
    "shared_memory_region": "shared memory: send the tensor's data in the request",
    "classification": "classification: lens answers embeddings (its Classify call classifies)",
}
_ELEMENT = re.compile(r"^input (\d+): ")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor a model takes or gives; -1 in `shape`: a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class InputTensor:
    """An input as a transport decoded it: each element bytes (binary or protobuf contents,
    an image decoded from JSON's base64) or str (a text from JSON)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Sequence[bytes | str]


@dataclass(frozen=True)
class Inferred:
    """The `embedding` output: vectors (n, dim) float32, images' rows first."""

    model: str
    version: str
    vectors: np.ndarray


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


def server_version() -> str:
    try:
        return metadata.version("lens")
    except metadata.PackageNotFoundError:
        return "0"


def split_bytes(raw: bytes, count: int, where: str) -> list[bytes]:
    """A BYTES tensor's raw contents → its `count` elements: each a 4-byte little-endian
    length, then that many bytes (how Triton's clients serialise BYTES tensors)."""
    items: list[bytes] = []
    view, offset, size = memoryview(raw), 0, len(raw)
    while offset < size:
        if len(items) == count:
            raise InvalidInput(
                f"{where}: {size - offset} bytes follow its {count} element(s) (its shape)"
            )
        if offset + 4 > size:
            raise InvalidInput(f"{where}: element {len(items)}: its 4-byte length is cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > size:
            raise InvalidInput(
                f"{where}: element {len(items)} declares {length} bytes, but only "
                f"{size - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"{where}: holds {len(items)} element(s), its shape says {count}")
    return items


def version_text(version: int) -> str:
    return str(version) if version else ""


class KServe:
    """The protocol's calls over `core`: metadata, readiness, inference, the repository."""

    def __init__(self, core: Core) -> None:
        self.models = core.models
        self.embedding = core.embedding

    # -- metadata and readiness --------------------------------------------------------------

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        info = self.models.get(name)  # NotFound lists the models
        status = _status(info, version)
        manifest = status.manifest if status else None
        modalities = manifest.modalities if manifest else info.modalities
        dim = manifest.dim if manifest else info.dim
        return ModelMetadata(
            name=info.name,
            versions=[str(s.version) for s in info.versions if s.state in _LOADED],
            platform=PLATFORM,
            inputs=[TensorSpec(m, BYTES, (-1,)) for m in MODALITIES if m in modalities],
            outputs=[TensorSpec(OUTPUT, FP32, (-1, dim or -1))],
        )

    def model_ready(self, name: str, version: str = "") -> tuple[bool, str]:
        """(ready, why not); NotFound for a model or version the repository lacks."""
        info = self.models.get(name)
        status = _status(info, version)
        if status is None:
            if info.serving_version:
                return True, ""
            return False, f"model {name!r} has no version serving"
        if status.state in _LOADED:
            return True, ""
        why = f": {status.reason}" if status.reason else ""
        return False, f"model {name!r} version {status.version} is {status.state}{why}"

    # -- inference ---------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str,
        inputs: Sequence[InputTensor],
        outputs: Sequence[str] = (),
        deadline: float | None = None,
    ) -> Inferred:
        """Embeds the elements of `inputs` with `name:version` ('' for the serving one).

        Raises InvalidInput naming the tensor (and element) at fault: an input the model
        lacks, a datatype other than BYTES, a shape other than [n] or that disagrees with
        the data, an undecodable image or non-UTF-8 text, no elements at all, too many; an
        output other than `embedding`; NotFound for an unknown model or version.
        """
        if not name:
            raise InvalidInput("model name is empty: name the model to infer with")
        number = self._version(name, version)
        for output in outputs:
            if output != OUTPUT:
                raise InvalidInput(
                    f"model {name!r} has no output {output!r}; its outputs: {OUTPUT}"
                )
        limit = self.embedding.config.limits.max_inputs_per_request
        with self.embedding.hold(name, number) as loaded:
            named = _by_name(inputs, loaded.manifest.modalities, name, limit)
            images = [_image(x, f"input image[{i}]") for i, x in enumerate(named.get("image", ()))]
            texts = [_text(x, f"input text[{i}]") for i, x in enumerate(named.get("text", ()))]
            items: list[Input] = [*images, *texts]
            if not items:
                raise InvalidInput("the request has no elements: send at least one image or text")
            try:
                embedded = await self.embedding.embed(items, deadline=deadline, pinned=loaded)
            except InvalidInput as e:
                raise _named(e, len(images)) from None
        return Inferred(embedded.model, str(embedded.version), embedded.vectors)

    def _version(self, name: str, version: str) -> int:
        if not version:
            return 0
        if version.isdigit() and int(version) > 0:
            return int(version)  # one the repository lacks: the registry's NotFound lists them
        status = _status(self.models.get(name), version)  # NotFound: not a version number
        assert status is not None
        return status.version

    # -- the model repository extension -------------------------------------------------------

    def repository_index(self, ready: bool = False) -> list[IndexEntry]:
        """Every version of every model, with its state as Triton names it (READY: loaded);
        with `ready`, only the loaded ones."""
        entries = []
        for info in self.models.all():
            for status in info.versions:
                state = _INDEX_STATE[status.state]
                if ready and state != "READY":
                    continue
                reason = status.reason or ("" if state == "READY" else str(status.state))
                entries.append(IndexEntry(info.name, str(status.version), state, reason))
        return entries

    async def load(self, name: str, parameters: Iterable[str] = ()) -> None:
        """Loads the model's newest version, serving it where the model has no serving
        version (lens's LoadModel). Triton's `config` and `file:` overrides are refused."""
        if overrides := sorted(k for k in parameters if k == "config" or k.startswith("file:")):
            raise InvalidInput(
                f"parameters {', '.join(overrides)}: lens loads a model's versions from its "
                "repository as they are; config and file overrides are not supported"
            )
        await self.models.load(name, 0)

    async def unload(self, name: str) -> None:
        """Unloads every version of the model, which serves no more until loaded again."""
        await self.models.unload(name, 0)


def _status(info: ModelInfo, version: str) -> VersionStatus | None:
    """The version's status; None for '' (the model as a whole)."""
    if not version:
        return None
    for status in info.versions:
        if version == str(status.version):
            return status
    raise NotFound(
        f"model {info.name!r} has no version {version!r}. "
        f"{available('versions', [s.version for s in info.versions])}"
    )


def _by_name(
    inputs: Sequence[InputTensor], modalities: Sequence[str], model: str, limit: int
) -> dict[str, Sequence[bytes | str]]:
    """The elements of each input, checked against the model's inputs."""
    named: dict[str, Sequence[bytes | str]] = {}
    total = 0
    for tensor in inputs:
        if tensor.name not in modalities:
            raise InvalidInput(
                f"model {model!r} has no input {tensor.name!r}; its inputs: {', '.join(modalities)}"
            )
        if tensor.name in named:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        if tensor.datatype != BYTES:
            raise InvalidInput(
                f"input {tensor.name!r}: datatype {tensor.datatype!r}, but the model takes {BYTES}"
            )
        count = check_count(tensor.shape, tensor.name, limit)
        if len(tensor.data) != count:
            raise InvalidInput(
                f"input {tensor.name!r}: shape {list(tensor.shape)} but {len(tensor.data)} "
                "element(s) of data"
            )
        total += count
        if total > limit:
            raise InvalidInput(
                f"{total} elements is over the limit of {limit} per request: split the batch"
            )
        named[tensor.name] = tensor.data
    return named


def check_parameters(parameters: Iterable[str], where: str) -> None:
    """Refuses the parameters of Triton's extensions that lens does not implement."""
    for key in parameters:
        if key in _UNSUPPORTED:
            raise InvalidInput(f"{where}: {_UNSUPPORTED[key]} is not supported")


def check_count(shape: Sequence[int], name: str, limit: int) -> int:
    """The elements a shape holds, refused before its data is read where it is not [n] or
    n is over the per-request limit (a transport calls it before splitting raw bytes)."""
    if len(shape) != 1 or shape[0] < 0:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)}, but the model takes [n] (one element per "
            "image or text)"
        )
    if shape[0] > limit:
        raise InvalidInput(
            f"input {name!r}: {shape[0]} elements is over the limit of {limit} per request: "
            "split the batch"
        )
    return shape[0]


def _image(element: bytes | str, where: str) -> bytes:
    if isinstance(element, str):  # JSON's base64 is the HTTP route's to decode
        raise InvalidInput(f"{where}: an image must be the bytes of an image file")
    return element


def _text(element: bytes | str, where: str) -> str:
    if isinstance(element, str):
        return element
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None


def _named(error: LensError, images: int) -> LensError:
    """The core names an input by its place in the request (`input 3: ...`, images first);
    the protocol's client knows it as an element of a tensor."""
    message = str(error)
    match = _ELEMENT.match(message)
    if not match:
        return error
    index = int(match.group(1))
    where = f"image[{index}]" if index < images else f"text[{index - images}]"
    return type(error)(f"input {where}: {message[match.end() :]}")
