"""Exact (flat) search on a GPU: a device copy of a flat index, kept in step with it.

The CPU `IndexIDMap(IndexFlat)` stays the source of truth (snapshots, range search, every
other index kind); a copy made here only answers `search`, and answers exactly what the CPU
index would: (scores, rows), each (n, k) float32 and int64, closest first, row -1 and faiss's
sentinel score (-FLT_MAX for inner product, +FLT_MAX for squared L2) where fewer than k items
are left. Two kinds of copy:

- `DeviceFlat` (torch): one matrix product and `torch.topk` per tile of queries × database,
  the brute-force k-selection of Johnson, Douze & Jégou, "Billion-scale similarity search with
  GPUs" (2017), on a (capacity, dim) tensor of `dtype` (fp16 on CUDA). It runs on the CPU
  too, which is how it is tested.
- `FaissGpuFlat`: faiss-gpu's `GpuIndexFlat` with fp16 storage, taken when this faiss build
  has GPU support.

`search_device` decides which, once per process, when the first index is built or loaded.
torch is imported only then: the serving package works without it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import faiss as _faiss
import numpy as np

from lens_server.errors import FailedPrecondition, InvalidInput
from lens_server.gpu import cuda_available

if TYPE_CHECKING:
    import torch

faiss: Any = _faiss  # the SWIG module's stubs lack the GPU classes and IDMap fields

DEVICES = ("auto", "cpu", "cuda")
FLT_MAX = float(np.finfo(np.float32).max)  # faiss's score for a missing hit (negated for IP)


class DeviceCopy(Protocol):
    """What `VectorIndex` asks of a GPU copy of its flat index."""

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, rows: np.ndarray) -> None: ...

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(scores, rows), each (n, k), as `VectorIndex.search`; None: search the CPU index."""
        ...


def search_device(requested: str = "auto") -> str:
    """The backend that searches flat indexes: "faiss-gpu", "torch-cuda" or "cpu".

    `requested`: "auto" takes a CUDA GPU when one is usable, "cuda" insists on one
    (FailedPrecondition where there is none), "cpu" never uses one.
    """
    if requested not in DEVICES:
        raise InvalidInput(f"device must be one of {', '.join(DEVICES)}; got {requested!r}")
    if requested == "cpu":
        return "cpu"
    backend, why_not = _gpu_backend()
    if backend is None and requested == "cuda":
        raise FailedPrecondition(f"device 'cuda' was requested but no GPU is usable: {why_not}")
    return backend or "cpu"


def device_copy(index: Any, backend: str) -> DeviceCopy | None:
    """A GPU copy of `index` (an IndexIDMap(IndexFlat) holding its items) for `backend`."""
    if backend == "faiss-gpu":
        resources, lock = _faiss_gpu()
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True

        def to_gpu(flat: Any) -> Any:
            return faiss.index_cpu_to_gpu(resources, 0, flat, options)

        return FaissGpuFlat(index, to_gpu, lock)
    if backend == "torch-cuda":
        return DeviceFlat.from_index(index, device="cuda", dtype="float16")
    return None


@functools.cache
def _gpu_backend() -> tuple[str | None, str]:
    """(the GPU backend, or None and why there is none); probed once, on first use."""
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return "faiss-gpu", ""
    if not cuda_available():
        return None, "this faiss build has no GPU support and torch sees no CUDA GPU"
    return "torch-cuda", ""


@functools.cache
def _faiss_gpu() -> tuple[Any, threading.Lock]:
    """The process's faiss GPU resources and the lock around their use: a GpuResources
    object must not be used by two threads at once, and collections search concurrently."""
    return faiss.StandardGpuResources(), threading.Lock()


def _sentinel(l2: bool) -> float:
    return FLT_MAX if l2 else -FLT_MAX


def _missing(n: int, k: int, l2: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) (n, k) with no hit at all, as faiss gives them."""
    return np.full((n, k), _sentinel(l2), np.float32), np.full((n, k), -1, np.int64)


# Candidates beyond k that an fp16 or bf16 ranking keeps for the float32 rescoring: enough to
# hold the true top k where rounding the scores to 16 bits reorders near ties.
RESCORED = 32


class _Rows:
    """A growable int64 array (positions → row numbers), doubling its capacity."""

    def __init__(self, capacity: int = 0) -> None:
        self.data = np.empty(capacity, np.int64)
        self.size = 0

    def extend(self, rows: np.ndarray) -> None:
        need = self.size + len(rows)
        if need > len(self.data):
            grown = np.empty(max(need, 2 * len(self.data), 1024), np.int64)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = rows
        self.size = need

    def view(self) -> np.ndarray:
        return self.data[: self.size]


class DeviceFlat:
    """A flat index's vectors and row numbers in torch tensors, searched exactly.

    Items sit at positions 0..size-1 of `vectors` (capacity, dim); the capacity doubles when
    an add outgrows it, so adding n items copies O(n) in all, not the whole matrix per add.
    Removing fills each freed position with one of the last items (swap-remove): no mask to
    carry and nothing dead to skip in a search; order is not kept, so exact ties may come back
    in another order than faiss's. Row numbers are mirrored on the CPU to map hits back.

    A search takes `query_chunk` queries at a time and, so that a score tile stays within
    `max_score_bytes`, as many database rows per product as fit; each tile's top k is merged
    into the running top k.
    """

    def __init__(
        self,
        dim: int,
        metric: str,
        device: str = "cuda",
        dtype: str = "float16",
        query_chunk: int = 1024,
        max_score_bytes: int = 1 << 30,
        capacity: int = 0,
    ) -> None:
        import torch

        if metric not in ("cosine", "inner_product", "l2"):
            raise InvalidInput(f"metric must be cosine, inner_product or l2; got {metric!r}")
        if dtype not in ("float16", "bfloat16", "float32"):
            raise InvalidInput(f"dtype must be float16, bfloat16 or float32; got {dtype!r}")
        if query_chunk < 1 or max_score_bytes < 4:
            raise InvalidInput(
                f"query_chunk ({query_chunk}) and max_score_bytes ({max_score_bytes}) must be "
                "positive"
            )
        self.dim, self.l2 = dim, metric == "l2"
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        self.query_chunk, self.max_score_bytes = query_chunk, max_score_bytes
        self.vectors = torch.empty((capacity, dim), dtype=self.dtype, device=self.device)
        self.norms = torch.empty(capacity, dtype=torch.float32, device=self.device)  # ||x||²
        self.rows = _Rows(capacity)

    @classmethod
    def from_index(cls, index: Any, chunk: int = 65_536, **options: Any) -> DeviceFlat:
        """A copy of `index`, an IndexIDMap(IndexFlat), uploaded `chunk` vectors at a time."""
        flat = faiss.downcast_index(index.index)
        metric = "l2" if flat.metric_type == faiss.METRIC_L2 else "inner_product"
        copy = cls(flat.d, metric, capacity=int(index.ntotal), **options)
        rows = faiss.vector_to_array(index.id_map).astype(np.int64)
        for start in range(0, len(rows), chunk):
            stop = min(len(rows), start + chunk)
            copy.add(rows[start:stop], flat.reconstruct_n(start, stop - start))
        return copy

    @property
    def size(self) -> int:
        return self.rows.size

    def memory_bytes(self) -> int:
        return self.vectors.nbytes + self.norms.nbytes + self.rows.data.nbytes

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Appends `vectors` (n, dim) under row numbers `rows` (n,)."""
        import torch

        n, start = len(rows), self.size
        if n == 0:
            return
        if start + n > len(self.vectors):
            capacity = max(start + n, 2 * len(self.vectors), 1024)
            self.vectors = _grown(self.vectors, start, (capacity, self.dim))
            self.norms = _grown(self.norms, start, (capacity,))
        x = torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).to(self.device)  # (n, d)
        stored = x.to(self.dtype)
        self.vectors[start : start + n] = stored
        # from the stored (rounded) values, so that ||q - x||² is that of the vector searched
        self.norms[start : start + n] = stored.float().square().sum(1)
        self.rows.extend(np.asarray(rows, np.int64))

    def remove(self, rows: np.ndarray) -> None:
        """Drops the items of `rows` (those it holds), moving the last items into their place."""
        import torch

        size = self.size
        gone = np.flatnonzero(np.isin(self.rows.view(), np.asarray(rows, np.int64)))
        if not len(gone):
            return
        keep = size - len(gone)
        holes = gone[gone < keep]  # freed positions that stay inside the new size...
        tail = np.arange(keep, size)
        movers = tail[~np.isin(tail, gone)]  # ...filled by the survivors beyond it
        if len(holes):
            to = torch.from_numpy(holes).to(self.device)
            src = torch.from_numpy(movers).to(self.device)
            self.vectors[to] = self.vectors[src]
            self.norms[to] = self.norms[src]
            self.rows.data[holes] = self.rows.data[movers]
        self.rows.size = keep

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n, k), for `queries` (n, dim); only rows in `allowed` if given.

        Scores: inner products descending, or squared L2 distances ascending
        (||q||² − 2 q·x + ||x||², the product in `dtype`, the rest in float32).
        """
        import torch

        scores, rows = _missing(len(queries), k, self.l2)
        if self.size == 0 or len(queries) == 0:
            return scores, rows
        mask = None  # (size,) bool: the positions a filtered search may return
        if allowed is not None:
            keep = np.isin(self.rows.view(), np.asarray(allowed, np.int64))
            mask = torch.from_numpy(keep).to(self.device)
        q_all = torch.from_numpy(np.ascontiguousarray(queries, np.float32))  # (n, d)
        for start in range(0, len(queries), self.query_chunk):
            q = q_all[start : start + self.query_chunk].to(self.device)  # (m, d)
            top, at = self._top(q, k, mask)  # (m, k'), k' = min(k, size)
            hit = torch.ones_like(at, dtype=torch.bool) if mask is None else mask[at]
            best, where, valid = top.cpu().numpy(), at.cpu().numpy(), hit.cpu().numpy()
            found = np.where(valid, self.rows.data[where], -1)
            stop = start + len(q)
            rows[start:stop, : found.shape[1]] = found
            scores[start:stop, : found.shape[1]] = np.where(valid, best, _sentinel(self.l2))
        return scores, rows

    def _top(
        self, q: torch.Tensor, k: int, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best min(k, size) (scores, positions), each (m, k'), of queries `q` (m, d).

        Inner products of fp16 or bf16 vectors are ranked on the product's own output, as
        wide as the vectors (half the memory traffic of float32 scores, which is what the
        top-k pass spends its time on), for `k + RESCORED` candidates; those are then scored
        again in float32 and the best k kept. L2 distances are ranked in float32 throughout.
        """
        import torch

        m, size = len(q), self.size
        reduced = not self.l2 and self.dtype != torch.float32
        score_type = self.dtype if reduced else torch.float32
        pick = min(size, k + RESCORED) if reduced else k
        block = max(1, self.max_score_bytes // (score_type.itemsize * m))  # rows per tile
        qd = q.to(self.dtype)
        q_norms = q.square().sum(1, keepdim=True)  # (m, 1)
        best: torch.Tensor | None = None
        where: torch.Tensor | None = None
        for lo in range(0, size, block):
            hi = min(size, lo + block)
            s = (qd @ self.vectors[lo:hi].T).to(score_type)  # (m, hi - lo)
            if self.l2:  # faiss clamps the rounding below zero as well
                s = (q_norms - 2 * s + self.norms[lo:hi]).clamp_(min=0)
            if mask is not None:
                s.masked_fill_(~mask[lo:hi], float("inf") if self.l2 else float("-inf"))
            s, p = torch.topk(s, min(pick, hi - lo), dim=1, largest=not self.l2)  # (m, k')
            p += lo
            if best is not None and where is not None:
                s, j = torch.topk(
                    torch.cat([best, s], 1), min(pick, hi), dim=1, largest=not self.l2
                )
                p = torch.gather(torch.cat([where, p], 1), 1, j)
            best, where = s, p
        assert best is not None and where is not None  # size > 0
        if not reduced:
            return best, where
        exact = torch.einsum("mcd,md->mc", self.vectors[where].float(), q)  # (m, pick)
        exact.masked_fill_(best == float("-inf"), float("-inf"))  # filtered out stays out
        top, j = torch.topk(exact, min(k, pick), dim=1)
        return top, torch.gather(where, 1, j)


def _grown(tensor: torch.Tensor, used: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A larger `shape` tensor holding `tensor`'s first `used` entries."""
    import torch

    grown = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
    grown[:used] = tensor[:used]
    return grown


class FaissGpuFlat:
    """faiss-gpu's flat index as the device copy of `source`, an IndexIDMap(IndexFlat).

    GPU indexes neither remove vectors nor honour ID selectors (faiss issues #584, #3924), so
    the copy is addressed by position: a remove marks positions dead, a search asks for
    k + dead hits and drops the dead ones, and past `MAX_DEAD` dead positions the copy is
    made again from `source` (which dropped them already): one upload per MAX_DEAD removes.
    A filtered search is left to `source` (returns None). `to_device` copies an IndexFlat to
    the device; `lock` is held around every use of it.
    """

    MAX_DEAD = 1024
    MAX_K = 2048  # the largest k GpuIndexFlat selects

    def __init__(self, source: Any, to_device: Callable[[Any], Any], lock: threading.Lock) -> None:
        self.source, self.to_device, self.lock = source, to_device, lock
        self.l2 = faiss.downcast_index(source.index).metric_type == faiss.METRIC_L2
        self._reload()

    def _reload(self) -> None:
        with self.lock:
            self.device_index: Any = None  # free the old copy before making the new one
            self.device_index = self.to_device(faiss.downcast_index(self.source.index))
        self.rows = _Rows()
        self.rows.extend(faiss.vector_to_array(self.source.id_map).astype(np.int64))
        self.dead = np.zeros(len(self.rows.data), bool)
        self.ndead = 0

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if not len(rows):
            return
        with self.lock:
            self.device_index.add(np.ascontiguousarray(vectors, np.float32))
        self.rows.extend(np.asarray(rows, np.int64))
        if len(self.dead) < len(self.rows.data):
            self.dead = np.concatenate(
                [self.dead, np.zeros(len(self.rows.data) - len(self.dead), bool)]
            )

    def remove(self, rows: np.ndarray) -> None:
        held = self.rows.view()
        gone = np.flatnonzero(np.isin(held, np.asarray(rows, np.int64)) & ~self.dead[: len(held)])
        self.dead[gone] = True
        self.ndead += len(gone)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        if allowed is not None or k > self.MAX_K:
            return None
        if self.ndead > self.MAX_DEAD or k + self.ndead > self.MAX_K:
            self._reload()
        size = self.rows.size
        if size == 0 or len(queries) == 0:
            return _missing(len(queries), k, self.l2)
        with self.lock:
            scores, where = self.device_index.search(
                np.ascontiguousarray(queries, np.float32), min(k + self.ndead, size)
            )
        valid = where >= 0
        valid[valid] = ~self.dead[where[valid]]
        keep = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # the first k live hits, in order
        valid = np.take_along_axis(valid, keep, 1)
        where = np.take_along_axis(where, keep, 1)
        out_scores, out_rows = _missing(len(queries), k, self.l2)
        out_rows[:, : keep.shape[1]] = np.where(valid, self.rows.data[where], -1)
        out_scores[:, : keep.shape[1]] = np.where(
            valid, np.take_along_axis(scores, keep, 1), _sentinel(self.l2)
        )
        return out_scores, out_rows
