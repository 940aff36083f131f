"""FAISS indexes of a collection: flat, HNSW or IVF-PQ, all addressed by row number.

Every index is wrapped in `IndexIDMap` so items are found and removed by the row number the
SQLite store gave them. Flat and HNSW indexes store their vectors as float32, or compactly
(`IndexConfig.storage`): float16 or int8 through FAISS's scalar quantizer (int8 ranges
trained per dimension on the collection's own vectors), or one sign bit a dimension
(`IndexBinaryFlat`, Hamming distance) with the top candidates rescored from the float32
vectors the store keeps, so a binary collection ranks its final hits exactly.

HNSW cannot remove vectors: removed rows become tombstones that every search excludes with an
ID selector, until a rebuild drops them. A float32 flat index searches on a GPU where one is
usable (`gpu_search`): the CPU index stays the source of truth, the GPU copy is updated with
it on every add and remove.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
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
STORAGES = ("float32", "float16", "int8", "binary")
_QTYPES = {"float16": "QT_fp16", "int8": "QT_8bit"}
# An int8 index trains its per-dimension ranges on at least this many vectors; a collection
# with fewer stores float32 until it has them.
INT8_MIN_TRAIN = 256
# A binary search rescores this many Hamming candidates per hit asked for (at least 100).
RESCORE_FACTOR = 10

# The float32 vectors of rows, from the store: how a binary index rescores its candidates.
VectorsOf = Callable[[Sequence[int]], tuple[np.ndarray, np.ndarray]]


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
    # How flat and HNSW indexes hold vectors: float32, float16, int8 or binary (flat only).
    storage: str = "float32"
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
        if self.storage not in STORAGES:
            raise InvalidInput(
                f"storage must be one of {', '.join(STORAGES)}; got {self.storage!r}"
            )
        if self.storage == "binary" and self.type not in ("auto", "flat"):
            raise InvalidInput(f"binary storage needs a flat index, not {self.type}")
        if self.storage != "float32" and self.type == "ivf-pq":
            raise InvalidInput(
                f"{self.storage} storage is for flat and hnsw indexes; ivf-pq compresses "
                "vectors by its own codes"
            )

    def target(self, count: int) -> str:
        """The index type that fits `count` items."""
        if self.type != "auto":
            return self.type
        if self.storage == "binary":
            return "flat"
        if count >= self.auto_ivfpq_from and self.storage == "float32":
            return "ivf-pq"
        return "hnsw" if count >= self.auto_hnsw_from else "flat"

    def min_train(self, count: int) -> int:
        """Items an IVF-PQ index needs before it can be trained well."""
        return max(39 * self.nlist(count), 39 * 2**self.pq_nbits, 1)

    def nlist(self, count: int) -> int:
        return self.ivf_nlist or max(16, int(4 * math.sqrt(max(count, 1))))

    def stored_as(self, count: int) -> str:
        """The storage an index of `count` items has: int8 waits for enough to train on."""
        if self.storage == "int8" and count < INT8_MIN_TRAIN:
            return "float32"
        return self.storage

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
    """One built FAISS index (`kind` is "flat", "hnsw" or "ivf-pq"; `storage` one of
    STORAGES).

    `device` ("auto", "cpu" or "cuda", see `gpu_search.search_device`): where a float32 flat
    index searches; `self.device` is the backend it got ("faiss-gpu", "torch-cuda" or "cpu").
    A binary index needs `vectors_of` set (by the collection) before it searches.
    """

    def __init__(
        self,
        kind: str,
        index: faiss.Index,
        config: IndexConfig,
        device: str = "auto",
        storage: str = "float32",
        metric: str = "cosine",
    ) -> None:
        self.kind = kind
        self.storage = storage
        # Scores are squared distances, ascending (L2), or similarities, descending.
        self.l2 = metric == "l2"
        self.index = index
        self.config = config
        self.tombstones: set[int] = set()
        self.vectors_of: VectorsOf | None = None
        flat = kind == "flat" and storage == "float32"
        backend = search_device(device) if flat or device != "auto" else "cpu"
        self.gpu: DeviceCopy | None = None
        self.device = "cpu"
        if flat and backend != "cpu":
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
        storage: str = "float32",
    ) -> VectorIndex:
        """An empty index of `kind` storing `storage`; IVF-PQ and int8 are trained on `train`
        (n, dim) first."""
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if storage == "binary":
            if dim % 8:
                raise InvalidInput(f"binary storage needs a dimension divisible by 8, not {dim}")
            binary = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(dim))
            return cls(kind, binary, config, device, storage, metric)
        qtype = getattr(faiss.ScalarQuantizer, _QTYPES[storage]) if storage in _QTYPES else None
        if kind == "flat" and qtype is not None:
            inner = faiss.IndexScalarQuantizer(dim, qtype, faiss_metric)
            inner.train(np.ascontiguousarray(train, dtype=np.float32))
        elif kind == "flat":
            inner = faiss.IndexFlat(dim, faiss_metric)
        elif kind == "hnsw":
            if qtype is not None:
                inner = faiss.IndexHNSWSQ(dim, qtype, config.hnsw_m, faiss_metric)
                inner.train(np.ascontiguousarray(train, dtype=np.float32))
            else:
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
        return cls(kind, faiss.IndexIDMap(inner), config, device, storage, metric)

    @classmethod
    def load(
        cls, data: np.ndarray, config: IndexConfig, device: str = "auto", *, metric: str = "cosine"
    ) -> VectorIndex:
        """The index a snapshot holds (`serialize`'s bytes), of a collection of `metric`."""
        if config.storage == "binary":
            index = faiss.deserialize_index_binary(data)
            return cls("flat", index, config, device, "binary", metric)
        index = faiss.deserialize_index(data)
        inner = faiss.downcast_index(index.index)
        kind = {
            faiss.IndexFlat: "flat",
            faiss.IndexScalarQuantizer: "flat",
            faiss.IndexHNSW: "hnsw",
            faiss.IndexIVFPQ: "ivf-pq",
        }
        for type_, name in kind.items():
            if isinstance(inner, type_):
                return cls(name, index, config, device, _storage_of(inner), metric)
        raise ValueError(f"snapshot holds an unknown index type {type(inner).__name__}")

    def serialize(self) -> np.ndarray:
        if self.storage == "binary":
            return faiss.serialize_index_binary(self.index)
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
        if self.kind != "ivf-pq":
            return 0
        return int(faiss.downcast_index(self.index.index).nlist)

    def rows(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if len(rows):
            rows = np.ascontiguousarray(rows, np.int64)
            vectors = np.ascontiguousarray(vectors, np.float32)
            self.index.add_with_ids(self._codes(vectors), rows)
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
        if self.storage == "binary":
            return self._rescored(queries, k, allowed)
        if self.gpu is not None:
            found = self._on_gpu(self.gpu.search, queries, k, allowed)
            if found is not None:
                return found
        return self.index.search(queries, k, params=self._params(allowed))

    def range_search(
        self, vectors: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(limits, scores, rows) of every item within `threshold` of each vector (n, dim),
        as FAISS's range_search gives them. A binary index checks its closest candidates
        (`RESCORE_FACTOR` × 10 by Hamming distance) against the threshold exactly."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        if self.storage != "binary":
            return self.index.range_search(vectors, threshold)
        scores, rows = self._rescored(vectors, 10, None)
        l2 = self.l2
        keep = (rows >= 0) & ((scores <= threshold) if l2 else (scores >= threshold))
        limits = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
        return limits, scores[keep], rows[keep]

    def _codes(self, vectors: np.ndarray) -> np.ndarray:
        """What the FAISS index takes: the vectors, or for binary their sign bits packed."""
        if self.storage == "binary":
            return np.packbits(vectors > 0, axis=1)
        return vectors

    def _rescored(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A binary index's search: candidates by Hamming distance, ranked by the metric on
        their float32 vectors from the store."""
        if self.vectors_of is None:
            raise RuntimeError("a binary index searches with vectors_of set")
        wanted = min(max(k * RESCORE_FACTOR, 100), max(self.ntotal, 1))
        _, candidates = self.index.search(
            self._codes(queries), wanted, params=self._params(allowed)
        )
        present, vectors = self.vectors_of(np.unique(candidates[candidates >= 0]).tolist())
        order = np.argsort(present)
        present, vectors = np.asarray(present, np.int64)[order], vectors[order]
        worst = np.finfo(np.float32).max * (1 if self.l2 else -1)
        scores = np.full((len(queries), k), worst, np.float32)
        found = np.full((len(queries), k), -1, np.int64)
        if not len(present):  # nothing found (or all removed meanwhile)
            return scores, found
        at = np.minimum(np.searchsorted(present, candidates), len(present) - 1)
        valid = (candidates >= 0) & (present[at] == candidates)  # (n, candidates)
        for s in range(0, len(queries), 64):  # (64, candidates, dim) at a time
            own = vectors[at[s : s + 64]]
            query = queries[s : s + 64, None, :]
            score = ((own - query) ** 2).sum(-1) if self.l2 else (own * query).sum(-1)
            score = np.where(valid[s : s + 64], score, worst)
            best = np.argsort(score if self.l2 else -score, axis=1, kind="stable")[:, :k]
            top = np.take_along_axis(score, best, axis=1)
            rows = np.take_along_axis(candidates[s : s + 64], best, axis=1)
            hit = np.take_along_axis(valid[s : s + 64], best, axis=1)
            n = top.shape[1]
            scores[s : s + 64, :n] = np.where(hit, top, worst)
            found[s : s + 64, :n] = np.where(hit, rows, -1)
        return scores, found

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
        n, d = self.ntotal, self.index.d
        ids = 8 * n
        per_vector = {"float32": 4 * d, "float16": 2 * d, "int8": d, "binary": d // 8}
        if self.kind == "flat":
            return ids + n * per_vector[self.storage]
        if self.kind == "hnsw":
            graph = 4 * n * 2 * self.config.hnsw_m + 8 * n
            return ids + n * per_vector[self.storage] + graph
        inner = faiss.downcast_index(self.index.index)
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


def _storage_of(inner: Any) -> str:
    """How a loaded FAISS index stores its vectors (see STORAGES)."""
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    if isinstance(inner, faiss.IndexScalarQuantizer):
        names = {getattr(faiss.ScalarQuantizer, q): name for name, q in _QTYPES.items()}
        return names[inner.sq.qtype]
    return "float32"
