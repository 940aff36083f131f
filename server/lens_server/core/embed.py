"""Embedding: inputs in, one vector per input out, through the batcher of each tower."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lens_server.config import ServerConfig
from lens_server.errors import FailedPrecondition, InvalidInput
from lens_server.model import Input, LoadedVersion
from lens_server.registry import Registry
from lens_server.vectors import l2_normalize


@dataclass(frozen=True)
class Embedded:
    """The vectors (n, dim) float32 of n inputs, in input order, and the version that made
    them."""

    model: str
    version: int
    vectors: np.ndarray


class Embedding:
    def __init__(self, registry: Registry, config: ServerConfig) -> None:
        self.registry = registry
        self.config = config

    async def embed(
        self,
        inputs: Sequence[Input],
        model: str = "",
        version: int = 0,
        deadline: float | None = None,
        pinned: LoadedVersion | None = None,
        dimensions: int = 0,
    ) -> Embedded:
        """Images (encoded bytes) and texts (str) through `model:version` (the default model
        and its serving version where not given), or through `pinned` where a caller holds a
        version already (a stream keeps one version for all its requests). `dimensions`
        truncates each vector to its first dimensions and normalises it again, for a model
        trained with nested (Matryoshka) dimensions; 0: the model's own."""
        self.check(inputs)
        with contextlib.ExitStack() as held:
            loaded = pinned or held.enter_context(self.registry.lease(model, version))
            _check_dimensions(loaded, dimensions)
            vectors = await loaded.embed(list(inputs), deadline)
        if dimensions and dimensions != vectors.shape[1]:
            vectors = l2_normalize(vectors[:, :dimensions])
        return Embedded(loaded.name, loaded.version, vectors)

    def hold(
        self, model: str = "", version: int = 0
    ) -> contextlib.AbstractContextManager[LoadedVersion]:
        """The version `model:version` resolves to now, kept loaded until the context ends,
        for a caller that sends several requests through one version (`embed(pinned=...)`):
        a deploy in the middle of a stream does not split it across versions."""
        return self.registry.lease(model, version)

    def check(self, inputs: Sequence[Input]) -> None:
        """Refuses an empty request, too many inputs, or a text over the length limit."""
        limits = self.config.limits
        count = len(inputs)
        if count == 0:
            raise InvalidInput("inputs is empty: send at least one image or text")
        if count > limits.max_inputs_per_request:
            raise InvalidInput(
                f"{count} inputs is over the limit of {limits.max_inputs_per_request} per "
                "request: split the batch"
            )
        for index, item in enumerate(inputs):
            if isinstance(item, str) and len(item) > limits.max_text_chars:
                raise InvalidInput(
                    f"input {index}: text is {len(item)} characters, over the limit "
                    f"of {limits.max_text_chars}"
                )

    def token_counts(
        self,
        texts: Sequence[str],
        model: str = "",
        version: int = 0,
        pinned: LoadedVersion | None = None,
    ) -> list[int]:
        """Tokens each text takes in the model's tokenizer (start and end tokens included,
        truncated at the context length), as OpenAI's `usage` counts them; through `pinned`
        where the caller holds a version already."""
        with contextlib.ExitStack() as held:
            loaded = pinned or held.enter_context(self.registry.lease(model, version))
            if loaded.text is None:
                raise FailedPrecondition(
                    f"model {loaded.name} version {loaded.version} has no text tower"
                )
            return loaded.text.lengths(list(texts))


def _check_dimensions(model: LoadedVersion, dimensions: int) -> None:
    """Refuses `dimensions` above the model's, or below it for a model whose manifest does not
    declare nested dimensions (`extra.nested_dims`: the sizes its training made meaningful)."""
    dim = model.manifest.dim
    if not dimensions or dimensions == dim:
        return
    nested = model.manifest.extra.get("nested_dims") or []
    if dimensions > dim:
        raise InvalidInput(f"dimensions {dimensions} is above model {model.name}'s {dim}")
    if not nested:
        raise InvalidInput(
            f"dimensions {dimensions}: model {model.name} was not trained with nested "
            f"(Matryoshka) dimensions, so only its full {dim} are meaningful"
        )
    if dimensions not in nested:
        shown = ", ".join(str(n) for n in sorted(nested))
        raise InvalidInput(f"dimensions {dimensions}: model {model.name} nests {shown}")
