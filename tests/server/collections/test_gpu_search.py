"""GPU search for flat indexes (`server.collections.gpu_search`).

On the CPU: the torch copy (`DeviceFlat`) against faiss's own IndexIDMap(IndexFlat), and the
faiss-gpu wrapper's bookkeeping with a CPU IndexFlat standing in for the GPU one. The real
CUDA path runs where a GPU is present.
"""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np
import pytest
import torch

from lens_server.collections.faiss_index import IndexConfig, VectorIndex
from lens_server.collections.gpu_search import DeviceFlat, FaissGpuFlat, search_device
from lens_server.errors import FailedPrecondition, InvalidInput

METRICS = ("cosine", "inner_product", "l2")
FLT_MAX = np.finfo(np.float32).max


def vectors(n: int, dim: int, metric: str, seed: int) -> np.ndarray:
    """(n, dim) float32: unit vectors for cosine, norm about 1 otherwise."""
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def reference(metric: str, dim: int) -> Any:
    """faiss's exact index as `VectorIndex` builds it, kept on the CPU."""
    return VectorIndex.build("flat", dim, metric, IndexConfig(), np.empty((0, dim)), "cpu")


def filled(metric: str, n: int = 3000, dim: int = 32, **options: Any) -> tuple[Any, DeviceFlat]:
    """(the faiss reference, a float32 DeviceFlat on the CPU), both holding rows 10..10+n."""
    rows, x = np.arange(10, 10 + n), vectors(n, dim, metric, seed=1)
    ref = reference(metric, dim)
    ref.add(rows, x)
    copy = DeviceFlat(dim, metric, device="cpu", dtype=options.pop("dtype", "float32"), **options)
    copy.add(rows, x)
    return ref, copy


def answered(found: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    assert found is not None, "the copy left the search to the CPU"
    return found


def assert_same(found: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray]):
    (scores, rows), (true_scores, true_rows) = found, truth
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert scores.shape == true_scores.shape and rows.shape == true_rows.shape
    np.testing.assert_array_equal(rows, true_rows)
    np.testing.assert_allclose(scores, true_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_float32_matches_faiss(metric: str) -> None:
    ref, copy = filled(metric)
    q = vectors(64, 32, metric, seed=2)
    assert_same(copy.search(q, 10), ref.search(q, 10))


@pytest.mark.parametrize("metric", METRICS)
def test_float16_recall_and_scores(metric: str) -> None:
    ref, copy = filled(metric, n=5000, dim=64, dtype="float16")
    q = vectors(200, 64, metric, seed=3)
    scores, rows = copy.search(q, 10)
    true_scores, true_rows = ref.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, true_rows, strict=True)])
    assert recall >= 0.99, recall
    np.testing.assert_allclose(scores, true_scores, atol=1e-2)
    assert copy.vectors.dtype == torch.float16


@pytest.mark.parametrize("metric", METRICS)
def test_adds_after_removes(metric: str) -> None:
    ref, copy = filled(metric, n=1000)
    rng = np.random.default_rng(4)
    for step in range(3):
        gone = rng.choice(np.arange(10, 1010 + 500 * step), 300, replace=False)
        gone = np.concatenate([gone, [5, 99_999]])  # rows neither holds are ignored
        ref.remove(gone)
        copy.remove(gone)
        rows = np.arange(1010 + 500 * step, 1510 + 500 * step)
        x = vectors(500, 32, metric, seed=10 + step)
        ref.add(rows, x)
        copy.add(rows, x)
        assert copy.size == ref.ntotal
        assert sorted(copy.rows.view().tolist()) == sorted(ref.rows().tolist())
        q = vectors(32, 32, metric, seed=20 + step)
        assert_same(copy.search(q, 10), ref.search(q, 10))


@pytest.mark.parametrize("metric", METRICS)
def test_fewer_items_than_k(metric: str) -> None:
    ref, copy = filled(metric, n=5)
    q = vectors(3, 32, metric, seed=5)
    scores, rows = copy.search(q, 8)
    assert_same((scores, rows), ref.search(q, 8))
    assert (rows[:, 5:] == -1).all()
    assert (scores[:, 5:] == (FLT_MAX if metric == "l2" else -FLT_MAX)).all()
    empty = DeviceFlat(32, metric, device="cpu", dtype="float32")
    assert_same(empty.search(q, 4), reference(metric, 32).search(q, 4))


@pytest.mark.parametrize("metric", METRICS)
def test_allowed_rows_only(metric: str) -> None:
    ref, copy = filled(metric)
    q = vectors(16, 32, metric, seed=6)
    rng = np.random.default_rng(6)
    allowed = np.concatenate([rng.choice(np.arange(10, 3010), 50, replace=False), [1, 50_000]])
    scores, rows = copy.search(q, 10, allowed)
    assert_same((scores, rows), ref.search(q, 10, allowed))
    assert set(rows.ravel().tolist()) <= set(allowed.tolist())
    few = allowed[:3]  # fewer allowed than k: padded as faiss pads
    assert_same(copy.search(q, 10, few), ref.search(q, 10, few))
    assert (copy.search(q, 10, few)[1][:, 3:] == -1).all()


@pytest.mark.parametrize("metric", METRICS)
def test_chunks_change_nothing(metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, whole = filled(metric, n=2000)
    # 7 queries per chunk, 7 × 100 float32 scores per tile: 20 database tiles per chunk
    _, tiny = filled(metric, n=2000, query_chunk=7, max_score_bytes=4 * 7 * 100)
    q = vectors(30, 32, metric, seed=7)
    calls = {"topk": 0}
    topk = torch.topk

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["topk"] += 1
        return topk(*args, **kwargs)

    monkeypatch.setattr(torch, "topk", counted)
    found = tiny.search(q, 10)
    assert calls["topk"] >= 5 * 20  # 5 query chunks × 20 tiles at least
    assert_same(found, whole.search(q, 10))
    assert_same(found, ref.search(q, 10))
    allowed = np.arange(10, 2010, 7)
    assert_same(tiny.search(q, 10, allowed), ref.search(q, 10, allowed))


def test_settings_are_validated() -> None:
    with pytest.raises(InvalidInput, match="'hamming'"):
        DeviceFlat(8, "hamming", device="cpu")
    with pytest.raises(InvalidInput, match="'int8'"):
        DeviceFlat(8, "l2", device="cpu", dtype="int8")
    with pytest.raises(InvalidInput, match="'tpu'"):
        search_device("tpu")
    with pytest.raises(InvalidInput, match="'tpu'"):
        VectorIndex.build("hnsw", 8, "l2", IndexConfig(), np.empty((0, 8)), "tpu")


def test_device_selection_without_gpu() -> None:
    if search_device("auto") != "cpu":
        pytest.skip("a GPU is usable here: test_cuda covers it")
    with pytest.raises(FailedPrecondition, match="'cuda' was requested but no GPU"):
        search_device("cuda")
    with pytest.raises(FailedPrecondition, match="no GPU"):
        VectorIndex.build("flat", 8, "l2", IndexConfig(), np.empty((0, 8)), "cuda")
    index = VectorIndex.build("flat", 8, "l2", IndexConfig(), np.empty((0, 8)))  # auto
    assert index.device == "cpu" and index.gpu is None


@pytest.mark.parametrize("metric", METRICS)
def test_vector_index_keeps_its_copy_in_step(metric: str) -> None:
    """Adds, removes, filtered searches and a snapshot round trip through `VectorIndex` with a
    CPU DeviceFlat as its GPU copy give what faiss alone gives."""
    ref, index = reference(metric, 16), reference(metric, 16)
    index.gpu = DeviceFlat.from_index(index.index, device="cpu", dtype="float32", chunk=100)
    for step in range(4):
        rows, x = np.arange(300 * step, 300 * step + 300), vectors(300, 16, metric, seed=step)
        for target in (ref, index):
            target.add(rows, x)
            target.remove(np.arange(300 * step, 300 * step + 300, 3))
    q = vectors(20, 16, metric, seed=9)
    assert_same(index.search(q, 12), ref.search(q, 12))
    assert_same(
        index.search(q, 12, np.arange(0, 1200, 5)), ref.search(q, 12, np.arange(0, 1200, 5))
    )
    loaded = VectorIndex.load(index.serialize(), IndexConfig(), "cpu")
    loaded.gpu = DeviceFlat.from_index(loaded.index, device="cpu", dtype="float32", chunk=100)
    assert loaded.gpu.size == ref.ntotal
    assert_same(loaded.search(q, 12), ref.search(q, 12))


def test_a_failing_copy_is_dropped_for_the_cpu() -> None:
    index, ref = reference("l2", 8), reference("l2", 8)
    for target in (index, ref):
        target.add(np.arange(50), vectors(50, 8, "l2", seed=0))

    class Broken:
        def search(self, *args: Any) -> Any:
            raise torch.OutOfMemoryError("CUDA out of memory")

    index.gpu, index.device = Broken(), "torch-cuda"
    q = vectors(4, 8, "l2", seed=1)
    assert_same(index.search(q, 5), ref.search(q, 5))
    assert index.gpu is None and index.device == "cpu"


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_gpu_bookkeeping(metric: str) -> None:
    """`FaissGpuFlat` with a CPU IndexFlat in place of the GPU one: dead positions are
    skipped, the copy is remade past MAX_DEAD, filtered searches are left to the CPU."""
    ref = reference(metric, 16)
    ref.add(np.arange(400), vectors(400, 16, metric, seed=0))
    copy = FaissGpuFlat(ref.index, faiss.clone_index, threading.Lock())
    copy.MAX_DEAD = 100
    q = vectors(10, 16, metric, seed=1)
    assert_same(answered(copy.search(q, 10)), ref.search(q, 10))
    rng = np.random.default_rng(2)
    for step in range(4):
        gone = rng.choice(ref.rows(), 40, replace=False)
        ref.remove(gone)  # the CPU index first, as VectorIndex does
        copy.remove(gone)
        rows = np.arange(400 + 30 * step, 430 + 30 * step)
        x = vectors(30, 16, metric, seed=3 + step)
        ref.add(rows, x)
        copy.add(rows, x)
        assert_same(answered(copy.search(q, 10)), ref.search(q, 10))
        assert copy.ndead == [40, 80, 0, 40][step]  # remade at the search past 100
    assert_same(answered(copy.search(q, 500)), ref.search(q, 500))  # more than it holds
    assert copy.search(q, 10, np.arange(5)) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("metric", METRICS)
def test_cuda(metric: str) -> None:
    """The real GPU path: `VectorIndex` on "cuda" (faiss-gpu or torch fp16) and DeviceFlat."""
    n, dim = 20_000, 128
    rows, x = np.arange(n), vectors(n, dim, metric, seed=0)
    ref = reference(metric, dim)
    index = VectorIndex.build("flat", dim, metric, IndexConfig(), np.empty((0, dim)), "cuda")
    assert index.device in ("faiss-gpu", "torch-cuda")
    copy = DeviceFlat(dim, metric, device="cuda", dtype="float16")
    for target in (ref, index, copy):
        target.add(rows, x)
        target.remove(np.arange(0, n, 4))
    q = vectors(300, dim, metric, seed=1)
    true_scores, true_rows = ref.search(q, 10)
    for scores, found in (index.search(q, 10), copy.search(q, 10)):
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, true_rows, strict=True)])
        assert recall >= 0.99, recall
        np.testing.assert_allclose(scores, true_scores, atol=1e-2)
    allowed = np.arange(1, n, 9)
    assert set(index.search(q, 10, allowed)[1].ravel().tolist()) <= set(allowed.tolist())
    assert (copy.search(q, 5, allowed[:2])[1][:, 2:] == -1).all()
