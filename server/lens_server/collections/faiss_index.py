"""FAISS indexes of a collection: flat, HNSW or IVF-PQ, all addressed by row number.

Every index is wrapped in `IndexIDMap` so items are found and removed by the row number the
SQLite store gave them. HNSW cannot remove vectors: removed rows become tombstones that every
search excludes with an ID selector, until a rebuild drops them. A flat index searches on a GPU
where one is usable (`gpu_search`): the CPU index stays the source of truth, the GPU copy is
updated with it on every add and remove.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss as _faiss
import numpy as np

from lens_server.collections.gpu_search import DeviceCopy, device_copy, search_device
from lens_server.errors import InvalidInput

log = logging.getLogger(__name__)

# faiss's bundled stubs lack the search-parameter classes and the IDMap fields (SWIG).
faiss: Any = _faiss

TYPES = ("auto", "flat", "hnsw", "ivf-pq")
METRICS = ("cosine", "inner_product", "l2")


@dataclass(frozen=True)
class IndexConfig:
    """How a collection is indexed (see `lens.v1.IndexSpec`)."""

    type: str = "auto"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 64
    ivf_nlist: int = 0
    ivf_nprobe: int = 16
    pq_m: int = 0
    pq_nbits: int = 8
    # `auto`: flat below this many items, HNSW from it...
    auto_hnsw_from: int = 100_000
    # ...and IVF-PQ from this many.
    auto_ivfpq_from: int = 2_000_000

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise InvalidInput(f"index type must be one of {', '.join(TYPES)}; got {self.type!r}")
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.pq_nbits <= 16:
            raise InvalidInput(f"pq_nbits must be in 1..16, got {self.pq_nbits}")

    def target(self, count: int) -> str:
        """The index type that fits `count` items."""
        if self.type != "auto":
            return self.type
        if count >= self.auto_ivfpq_from:
            return "ivf-pq"
        return "hnsw" if count >= self.auto_hnsw_from else "flat"

    def min_train(self, count: int) -> int:
        """Items an IVF-PQ index needs before it can be trained well."""
        return max(39 * self.nlist(count), 39 * 2**self.pq_nbits, 1)

    def nlist(self, count: int) -> int:
        return self.ivf_nlist or max(16, int(4 * math.sqrt(max(count, 1))))

    def pq(self, dim: int) -> int:
        if self.pq_m:
            if dim % self.pq_m:
                raise InvalidInput(f"pq_m {self.pq_m} must divide the dimension {dim}")
            return self.pq_m
        m = min(64, max(1, dim // 8))
        while dim % m:
            m -= 1
        return m


class VectorIndex:
    """One built FAISS index (`kind` is "flat", "hnsw" or "ivf-pq").

    `device` ("auto", "cpu" or "cuda", see `gpu_search.search_device`): where a flat index
    searches; `self.device` is the backend it got ("faiss-gpu", "torch-cuda" or "cpu").
    """

    def __init__(
        self, kind: str, index: faiss.Index, config: IndexConfig, device: str = "auto"
    ) -> None:
        self.kind = kind
        self.index = index
        self.config = config
        self.tombstones: set[int] = set()
        backend = search_device(device) if kind == "flat" or device != "auto" else "cpu"
        self.gpu: DeviceCopy | None = None
        self.device = "cpu"
        if kind == "flat" and backend != "cpu":
            self.device = backend
            self.gpu = self._on_gpu(device_copy, index, backend)

    @classmethod
    def build(
        cls,
        kind: str,
        dim: int,
        metric: str,
        config: IndexConfig,
        train: np.ndarray,
        device: str = "auto",
    ) -> VectorIndex:
        """An empty index of `kind`; IVF-PQ is trained on `train` (n, dim) first."""
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            inner = faiss.IndexFlat(dim, faiss_metric)
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss_metric)
            inner.hnsw.efConstruction = config.hnsw_ef_construction
        elif kind == "ivf-pq":
            nlist = min(config.nlist(len(train)), max(1, len(train) // 39))
            quantizer = faiss.IndexFlat(dim, faiss_metric)
            inner = faiss.IndexIVFPQ(
                quantizer, dim, nlist, config.pq(dim), config.pq_nbits, faiss_metric
            )
            inner.train(np.ascontiguousarray(train, dtype=np.float32))
        else:
            raise InvalidInput(f"unknown index type {kind!r}")
        return cls(kind, faiss.IndexIDMap(inner), config, device)

    @classmethod
    def load(cls, data: np.ndarray, config: IndexConfig, device: str = "auto") -> VectorIndex:
        index = faiss.deserialize_index(data)
        inner = faiss.downcast_index(index.index)
        kind = {faiss.IndexFlat: "flat", faiss.IndexHNSWFlat: "hnsw", faiss.IndexIVFPQ: "ivf-pq"}
        for type_, name in kind.items():
            if isinstance(inner, type_):
                return cls(name, index, config, device)
        raise ValueError(f"snapshot holds an unknown index type {type(inner).__name__}")

    def serialize(self) -> np.ndarray:
        return faiss.serialize_index(self.index)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def live(self) -> int:
        return self.ntotal - len(self.tombstones)

    @property
    def nlist(self) -> int:
        """IVF lists (0 for other kinds)."""
        return int(getattr(faiss.downcast_index(self.index.index), "nlist", 0))

    def rows(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if len(rows):
            rows = np.ascontiguousarray(rows, np.int64)
            vectors = np.ascontiguousarray(vectors, np.float32)
            self.index.add_with_ids(vectors, rows)
            if self.gpu is not None:
                self._on_gpu(self.gpu.add, rows, vectors)

    def remove(self, rows: list[int] | np.ndarray) -> None:
        if not len(rows):
            return
        if self.kind == "hnsw":
            self.tombstones.update(int(r) for r in rows)
        else:
            self.index.remove_ids(np.asarray(rows, dtype=np.int64))
            if self.gpu is not None:
                self._on_gpu(self.gpu.remove, np.asarray(rows, dtype=np.int64))

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n, k); a missing hit has row -1 and score -FLT_MAX (inner
        product) or +FLT_MAX (L2, whose scores are squared distances, ascending)."""
        queries = np.ascontiguousarray(queries, np.float32)
        if self.gpu is not None:
            found = self._on_gpu(self.gpu.search, queries, k, allowed)
            if found is not None:
                return found
        return self.index.search(queries, k, params=self._params(allowed))

    def _on_gpu(self, call: Callable[..., Any], *args: Any) -> Any:
        """`call(*args)` on the GPU copy; if the device fails (out of memory, a lost GPU), the
        copy is dropped and the CPU index, which holds every item, serves from then on."""
        try:
            return call(*args)
        except (RuntimeError, MemoryError) as error:
            log.warning(
                "%s GPU copy of a flat index dropped, searching on the CPU: %s", self.device, error
            )
            self.gpu, self.device = None, "cpu"
            return None

    def memory_bytes(self) -> int:
        """An estimate of what the index holds in memory."""
        inner = faiss.downcast_index(self.index.index)
        n, d = self.ntotal, inner.d
        ids = 8 * n
        if self.kind == "flat":
            return ids + 4 * n * d
        if self.kind == "hnsw":
            return ids + 4 * n * d + 4 * n * 2 * self.config.hnsw_m + 8 * n
        return ids + n * inner.code_size + 4 * inner.nlist * d

    def _params(self, allowed: np.ndarray | None) -> faiss.SearchParameters | None:
        selector = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
        elif self.tombstones:
            dead = np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones))
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=self.config.hnsw_ef_search)
        elif self.kind == "ivf-pq":
            params = faiss.SearchParametersIVF(nprobe=self.config.ivf_nprobe)
        elif selector is None:
            return None
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
            params._selector = selector  # keep it alive as long as the parameters
        return params
