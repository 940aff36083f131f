"""The actors of `lens bulk embed`: a batch of read inputs → their embeddings.

`VersionEmbedder` opens the model version as `lens serve` does (`open_towers`: the files
checked against their sha256, the runtime `RuntimeConfig` picks), fed pixels that read tasks
made with the server's `ImagePreprocessor` (`decode_batch`), so that a bulk vector is the
server's `Embed` vector for the same bytes. `ServerEmbedder` asks a running lens server
instead, for models kept on servers only.
Each returns {"index", "embedding" (N, dim) float32, "error"}; an input that fails gets its
reason and a zero row, and never fails the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lens_server.config import Limits, RuntimeConfig, ServerConfig
from lens_server.errors import LensError
from lens_server.model import open_towers
from lens_server.preprocess import ImagePreprocessor
from lens_server.repository import Repository
from lens_server.repository.manifest import ImageSpec, Manifest
from lens_server.vectors import l2_normalize


@dataclass(frozen=True)
class Target:
    """The model version a run embeds with (resolved on the driver)."""

    name: str
    version: int
    dim: int


def resolve(repo: Path, model: str) -> tuple[Target, Manifest]:
    """`NAME[:VERSION]` in `repo` → the version (NAME alone: the deployed version, else the
    latest, as the server serves it); NotFound lists what the repository has."""
    from lens_server.errors import FailedPrecondition, NotFound, available

    name, _, raw = model.partition(":")
    store = Repository(repo)
    if name not in store.models():
        raise NotFound(f"model {name!r} is not in {repo}. {available('models', store.models())}")
    if raw:
        if not raw.isdigit():
            raise NotFound(f"model {model!r}: VERSION must be a number")
        version = int(raw)
    else:
        version = store.deployed(name).serving or store.latest(name)
    manifest = store.manifest(name, version)
    if manifest.image is None:
        raise FailedPrecondition(f"model {name} version {version} has no image tower")
    return Target(name, version, manifest.dim), manifest


def decode_batch(batch: dict[str, Any], spec: ImageSpec, limits: Limits) -> dict[str, Any]:
    """Ray task, after `read_batch`: bytes → the server's preprocessed pixels, float32
    (N, 3, size, size) (zeros where the input failed, its reason in "error")."""
    preprocess = ImagePreprocessor(spec, limits)
    errors = [str(e) for e in batch["error"]]
    pixels = np.zeros((len(errors), 3, spec.size, spec.size), np.float32)
    for i, data in enumerate(batch["data"]):
        if not errors[i]:
            try:
                pixels[i] = preprocess(bytes(data))
            except LensError as e:
                errors[i] = str(e)
    return {"index": batch["index"], "pixels": pixels, "error": errors}


class VersionEmbedder:
    """Ray actor: the version's image tower on this node, fed `decode_batch`'s pixels."""

    def __init__(self, repo: str, name: str, version: int) -> None:
        store = Repository(Path(repo))
        manifest = store.manifest(name, version)
        folder = store.path(name, version)
        # The read and decode tasks share this node's cores: threads that spin between ops
        # would take their time.
        config = ServerConfig(repo=Path(repo), runtime=RuntimeConfig(spin=False))
        assert manifest.image is not None
        self._tower = open_towers(manifest, folder, config)["image"].tower
        self._dim = manifest.dim

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        errors = [str(e) for e in batch["error"]]
        rows = [i for i, e in enumerate(errors) if not e]
        out = np.zeros((len(errors), self._dim), np.float32)
        if rows:
            out[rows] = l2_normalize(self._tower(np.ascontiguousarray(batch["pixels"][rows])))
        return {"index": batch["index"], "embedding": out, "error": errors}


class ServerEmbedder:
    """Ray actor: embeds through a lens server (`lens_client`), model `name:version`."""

    def __init__(self, server: str, name: str, version: int, dim: int) -> None:
        from lens_client.client import LensClient

        self._client = LensClient(server)
        self._model = f"{name}:{version}"
        self._dim = dim

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from lens_client.codec import LensClientError

        errors = list(batch["error"])
        rows = [i for i, e in enumerate(errors) if not e]
        out = np.zeros((len(errors), self._dim), np.float32)
        data = [bytes(batch["data"][i]) for i in rows]
        try:
            if rows:
                out[rows] = self._client.embed_images(data, model=self._model)
        except LensClientError:  # one bad input refuses the call: find it, embed the rest
            for i, one in zip(rows, data, strict=True):
                try:
                    out[i] = self._client.embed_images([one], model=self._model)[0]
                except LensClientError as e:
                    errors[i] = str(e)
        return {"index": batch["index"], "embedding": out, "error": errors}
