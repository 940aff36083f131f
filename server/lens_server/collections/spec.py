"""What a collection is (`CollectionSpec`), the model version its vectors come from, and the
checks that vectors fit it."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lens_server.collections.faiss_index import METRICS, IndexConfig
from lens_server.errors import InvalidInput, Unavailable
from lens_server.vectors import l2_normalize

SPEC = "collection.json"
BACKENDS = ("faiss", "milvus", "pgvector")


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    dim: int
    metric: str = "cosine"
    model: str = ""  # empty: vectors only
    version: int = 0
    index: IndexConfig = field(default_factory=IndexConfig)
    created: float = field(default_factory=time.time)
    # Where the items live: "faiss" (this server's SQLite + FAISS), "milvus" or "pgvector"
    # (the engine or database the server was started with).
    backend: str = "faiss"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidInput(
                f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}"
            )
        if self.metric not in METRICS:
            raise InvalidInput(f"metric must be one of {', '.join(METRICS)}; got {self.metric!r}")
        if self.dim < 1:
            raise InvalidInput(f"dim must be >= 1, got {self.dim}")
        if self.index.storage == "binary" and self.dim % 8:
            raise InvalidInput(f"binary storage needs a dim divisible by 8, got {self.dim}")

    def save(self, folder: Path) -> None:
        tmp = folder / (SPEC + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(folder / SPEC)

    @classmethod
    def load(cls, folder: Path) -> CollectionSpec:
        raw = json.loads((folder / SPEC).read_text())
        return cls(**{**raw, "index": IndexConfig(**raw["index"])})

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors (n, d) as the collection stores and searches them: float32, and of unit
        length for the cosine metric."""
        vectors = np.asarray(vectors, dtype=np.float32)
        return l2_normalize(vectors) if self.metric == "cosine" else vectors


@dataclass(frozen=True)
class ModelVersion:
    """The model version a collection's vectors come from, and their dimension."""

    model: str
    version: int
    dim: int

    def __post_init__(self) -> None:
        if not self.model:
            raise InvalidInput("model name is empty")
        if self.dim < 1:
            raise InvalidInput(f"dim must be >= 1, got {self.dim}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> ModelVersion:
        return cls(**json.loads(raw))


class VersionChanged(Unavailable):
    """The collection swapped to another model version after the caller embedded with the
    old one: embed again with the version now in `Collection.spec`."""


def check_version(spec: CollectionSpec, version: int | None) -> None:
    """VersionChanged unless vectors from model `version` (None: unknown) fit `spec`."""
    if version is not None and version != spec.version:
        raise VersionChanged(
            f"collection {spec.name} is at {spec.model} version {spec.version} now, "
            f"not {version}: embed again"
        )


def check_queries(spec: CollectionSpec, queries: np.ndarray, version: int | None) -> None:
    """Queries (n, dim) from model `version` fit `spec`: VersionChanged or InvalidInput."""
    check_version(spec, version)
    check_dim(queries, spec.dim, f"collection {spec.name}")


def check_dim(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    """`vectors` (n, dim), or InvalidInput naming `what` they were meant for."""
    if vectors.shape[1] != dim:
        raise InvalidInput(f"vectors have dim {vectors.shape[1]}; {what} has {dim}")
    return vectors
