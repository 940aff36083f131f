"""Collections: FAISS index types as lens builds them, on clustered synthetic vectors.

For each index type (flat, hnsw, ivf-pq with lens's defaults), and for flat indexes storing
float16, int8 or binary (`--storages`): add throughput, search QPS and latency at k=10 for
batches of 1 and 256, recall@10 against exact float32 search, and memory. (Binary rescores
its candidates from float32 vectors held in memory here; a collection reads them from SQLite.) Also
the durable write rate of a whole collection (SQLite WAL + FAISS) for upserts of 1,000.
`--device` adds exact search on a device (`server.collections.gpu_search.DeviceFlat`: one
matrix product + top-k, fp16 on CUDA; and faiss-gpu through `VectorIndex` where this faiss has
it): upload rate, queries/s in batches of 1,024, batch-1 latency, recall@10 against faiss.
Everything runs in one process on one machine, in one run; JSON lands in bench/results/.

    python bench/index.py                       # 1,000,000 × 512, about 15 minutes on 2 cores
    python bench/index.py --n 100000 --types flat,hnsw
    python bench/index.py --types flat --durable 0 --device cuda
    python bench/index.py --n 20000 --types flat --durable 0 --device cpu   # the torch path
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from harness import machine, save

from lens_server.collections import Collection, CollectionSpec, IndexConfig, NewItem
from lens_server.collections.faiss_index import VectorIndex
from lens_server.collections.gpu_search import DeviceFlat, search_device


def dataset(n: int, dim: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` unit vectors around 1,000 seeded centres, and queries near random items."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    data = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        data[start:stop] = centres[rng.integers(0, 1000, stop - start)]
        data[start:stop] += 0.6 * rng.normal(size=(stop - start, dim)).astype(np.float32)
    faiss.normalize_L2(data)
    q = data[rng.choice(n, queries, replace=False)] + 0.05 * rng.normal(size=(queries, dim))
    q = q.astype(np.float32)
    faiss.normalize_L2(q)
    return data, q


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    kind: str,
    data: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray | None,
    single: int,
    storage: str = "float32",
) -> tuple[dict, np.ndarray]:
    config = IndexConfig(type=kind, storage=storage)
    rows = np.arange(1, len(data) + 1, dtype=np.int64)
    start = time.perf_counter()
    train = data[:0]
    if kind == "ivf-pq":
        train = data[: max(config.min_train(len(data)), 100_000)]
    elif storage == "int8":
        train = data[:100_000]
    index = VectorIndex.build(kind, data.shape[1], "cosine", config, train, storage=storage)
    # A binary index rescores its candidates from the float32 vectors, which a collection
    # reads from SQLite; here they come from memory (rows are 1-based).
    index.vectors_of = lambda wanted: (np.asarray(wanted), data[np.asarray(wanted, int) - 1])
    trained = time.perf_counter() - start
    start = time.perf_counter()
    for s in range(0, len(data), 50_000):
        index.add(rows[s : s + 50_000], data[s : s + 50_000])
    added = time.perf_counter() - start

    found = np.empty((len(queries), 10), np.int64)
    start = time.perf_counter()
    for s in range(0, len(queries), 256):
        _, found[s : s + 256] = index.search(queries[s : s + 256], 10)
    batch_qps = len(queries) / (time.perf_counter() - start)
    latencies = []
    for q in queries[:single]:
        t = time.perf_counter()
        index.search(q[None], 10)
        latencies.append((time.perf_counter() - t) * 1000)
    truth = found if truth is None else truth
    recall = None
    if truth is not None:
        pairs = zip(found, truth, strict=True)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in pairs]))
    return {
        "train_s": trained,
        "add_per_s": len(data) / added,
        "search_qps_batch256": batch_qps,
        "search_qps_batch1": 1000 / float(np.mean(latencies)),
        "p50_ms_batch1": float(np.percentile(latencies, 50)),
        "p99_ms_batch1": float(np.percentile(latencies, 99)),
        "recall_at_10": recall,
        "memory_mb": index.memory_bytes() / 2**20,
        "rss_peak_mb": rss_mb(),
        "nlist": index.nlist,
    }, found


def measure_exact(
    index: VectorIndex | DeviceFlat,
    data: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray | None,
    single: int,
    sync: Callable[[], None],
) -> dict:
    """Exact search on a device: `index` is empty; `sync` waits for the device's queued work.
    Recall is measured against `truth` where it is given."""
    rows = np.arange(1, len(data) + 1, dtype=np.int64)
    start = time.perf_counter()
    for s in range(0, len(data), 65_536):
        index.add(rows[s : s + 65_536], data[s : s + 65_536])
    sync()
    uploaded = time.perf_counter() - start
    index.search(queries[:8], 10)  # warm-up: context, kernels, library handles
    found = np.empty((len(queries), 10), np.int64)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for s in range(0, len(queries), 1024):
            _, found[s : s + 1024] = index.search(queries[s : s + 1024], 10)
        rates.append(len(queries) / (time.perf_counter() - start))
    latencies = []
    for q in queries[:single]:
        t = time.perf_counter()
        index.search(q[None], 10)
        latencies.append((time.perf_counter() - t) * 1000)
    recall = None
    if truth is not None:
        pairs = zip(found, truth, strict=True)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in pairs]))
    return {
        "add_per_s": len(data) / uploaded,
        "search_qps_batch1024": float(np.median(rates)),
        "p50_ms_batch1": float(np.percentile(latencies, 50)),
        "p99_ms_batch1": float(np.percentile(latencies, 99)),
        "recall_at_10": recall,
    }


def device_runs(
    args: argparse.Namespace, data: np.ndarray, queries: np.ndarray, truth: np.ndarray
) -> dict:
    """`measure_exact` for DeviceFlat on `args.device` and, on CUDA, faiss-gpu if present."""
    import torch

    dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    sync = torch.cuda.synchronize if args.device == "cuda" else lambda: None
    indexes: dict[str, VectorIndex | DeviceFlat] = {
        f"torch-{args.device}-{dtype}": DeviceFlat(
            args.dim, "cosine", args.device, dtype, capacity=args.n
        )
    }
    if args.device == "cuda" and search_device("cuda") == "faiss-gpu":
        indexes["faiss-gpu-float16"] = VectorIndex.build(
            "flat", args.dim, "cosine", IndexConfig(), data[:0], "cuda"
        )
    results = {}
    for name, index in indexes.items():
        results[name] = r = measure_exact(index, data, queries, truth, args.single, sync)
        print(
            f"{name}: add {r['add_per_s']:>10,.0f}/s  batch1024 "
            f"{r['search_qps_batch1024']:>9,.0f} q/s  batch1 p50 {r['p50_ms_batch1']:7.2f} ms "
            f"p99 {r['p99_ms_batch1']:7.2f} ms  recall@10 {r['recall_at_10']:.3f}",
            flush=True,
        )
        del index
    return results


def durable_writes(data: np.ndarray, count: int) -> dict:
    """Upserts of 1,000 through a whole collection: each acknowledged only when on disk."""
    with tempfile.TemporaryDirectory() as folder:
        spec = CollectionSpec("bench", data.shape[1], index=IndexConfig(type="flat"))
        collection = Collection.create(Path(folder) / "bench", spec)
        start = time.perf_counter()
        for s in range(0, count, 1000):
            collection.upsert(
                [
                    NewItem(f"item-{i}", data[i], "{}", "vector", None)
                    for i in range(s, min(count, s + 1000))
                ]
            )
        elapsed = time.perf_counter() - start
        collection.close()
    return {"items": count, "upserts_per_s": count / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--single", type=int, default=200, help="batch-1 queries timed")
    parser.add_argument("--types", default="flat,hnsw,ivf-pq")
    parser.add_argument(
        "--storages",
        default="float16,int8,binary",
        help="compact storages measured as flat indexes beside float32 ('' for none)",
    )
    parser.add_argument("--durable", type=int, default=100_000, help="items upserted durably")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="also exact search on a device"
    )
    parser.add_argument("--dtype", default=None, help="device vectors (float16 on cuda)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    data, queries = dataset(args.n, args.dim, args.queries, args.seed)
    print(
        f"{args.n} × {args.dim} vectors, {args.queries} queries, {faiss.omp_get_max_threads()} "
        "threads",
        flush=True,
    )
    results: dict[str, dict] = {}
    truth = None
    kinds = args.types.split(",")
    if "flat" in kinds:  # exact first: the ground truth for recall
        kinds.remove("flat")
        kinds.insert(0, "flat")
    else:
        truth = VectorIndex.build("flat", args.dim, "cosine", IndexConfig(), data[:0])
        truth.add(np.arange(1, args.n + 1), data)
        truth = truth.search(queries, 10)[1]
    runs = [(kind, "float32") for kind in kinds]
    runs += [("flat", storage) for storage in args.storages.split(",") if storage]
    for kind, storage in runs:
        name = kind if storage == "float32" else f"{kind}-{storage}"
        results[name], found = measure(kind, data, queries, truth, args.single, storage)
        truth = found if truth is None else truth
        r = results[name]
        print(
            f"{name:12} add {r['add_per_s']:>10,.0f}/s  batch256 {r['search_qps_batch256']:>9,.0f} "
            f"q/s  batch1 p50 {r['p50_ms_batch1']:7.2f} ms p99 {r['p99_ms_batch1']:7.2f} ms  "
            f"recall@10 {r['recall_at_10']:.3f}  memory {r['memory_mb']:,.0f} MB",
            flush=True,
        )
    devices = device_runs(args, data, queries, truth) if args.device and truth is not None else {}
    writes = durable_writes(data, min(args.durable, args.n)) if args.durable else {}
    if writes:
        print(f"durable upserts through a collection: {writes['upserts_per_s']:,.0f} items/s")
    report = {
        "benchmark": "index",
        "machine": machine(faiss=faiss.__version__, threads=str(faiss.omp_get_max_threads())),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "index_types": results,
        "device_flat": devices,
        "durable_writes": writes,
    }
    save(report, f"index-{args.n}x{args.dim}", args.out)


if __name__ == "__main__":
    main()
