"""The Milvus and pgvector backends against FAISS flat: search q/s and recall@10 on the same
N × 512 set.

A real `milvus-lite server` process (temp data dir) holds one lens collection
(`MilvusCollection`, HNSW with lens's defaults: M 32, efConstruction 40, ef 64); the same
vectors go into a FAISS flat index in this process, which gives the exact top-10. Measured:
the upsert rate through lens's backend (batches of 1,000, each acknowledged by the engine),
the flush that seals the segments (so that HNSW serves them), queries/s one query per call
and in batches of 100, and recall@10 of Milvus's hits against
FAISS flat; FAISS flat's own q/s for comparison. Vectors as in bench/index.py (unit vectors
around 1,000 centres). JSON lands in bench/results/.

A real PostgreSQL (`tests/server/collections/pg_server.py`, the pgserver wheel's binaries)
holds the same collection as a `PgCollection` (pgvector's HNSW, built as rows are inserted:
nothing to seal), measured the same way.

    python bench/backend.py                     # 20,000 × 512, both backends
    python bench/backend.py --backends pgvector
    python bench/backend.py --n 1000000         # where the time allows
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import faiss
import numpy as np
from harness import machine, save
from index import dataset

from lens_server.collections import CollectionSpec, IndexConfig, NewItem
from lens_server.collections.milvus import MilvusCollection
from lens_server.collections.milvus_engine import MilvusEngine
from lens_server.collections.pgvector import PgCollection
from lens_server.collections.pgvector_engine import PgEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.server.collections import pg_server
from tests.server.collections.milvus_server import MilvusServer
from tests.server.collections.pg_server import PgServer


def recall(found: list[list[str]], truth: np.ndarray) -> float:
    hits = [
        len({int(i) for i in row} & set(t.tolist())) for row, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits) / truth.shape[1])


def measure(
    collection: MilvusCollection | PgCollection,
    data: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    seal: Callable[[], None],
) -> dict[str, float]:
    """Upserts `data` in batches of 1,000, runs `seal`, then searches `queries` one per call
    and in batches of 100."""
    n = len(data)
    start = time.perf_counter()
    for s in range(0, n, 1000):
        collection.upsert(
            [NewItem(str(i), data[i], "{}", "vector", None) for i in range(s, min(n, s + 1000))]
        )
    upsert_s = time.perf_counter() - start
    print(f"{collection.backend}: upserted {n} in {upsert_s:.1f} s ({n / upsert_s:.0f}/s)")
    start = time.perf_counter()
    seal()
    seal_s = time.perf_counter() - start
    collection.search(queries[:1], k)  # warm
    start = time.perf_counter()
    single = [[h.id for h in collection.search(q[None], k)[0]] for q in queries]
    single_qps = len(queries) / (time.perf_counter() - start)
    start = time.perf_counter()
    batched: list[list[str]] = []
    for s in range(0, len(queries), 100):
        batched += [[h.id for h in row] for row in collection.search(queries[s : s + 100], k)]
    batch_qps = len(queries) / (time.perf_counter() - start)
    return {
        "upsert_per_s": n / upsert_s,
        "seal_s": seal_s,
        "qps_batch_1": single_qps,
        "qps_batch_100": batch_qps,
        "recall_at_10": recall(single, truth),
        "recall_at_10_batched": recall(batched, truth),
    }


def milvus(tmp: Path, spec: CollectionSpec, data, queries, truth, k) -> dict[str, object]:
    engine_process = MilvusServer(tmp / "milvus")
    try:
        engine = MilvusEngine(engine_process.uri, timeout_s=120)
        collection = MilvusCollection.create(engine, spec)
        # Sealed segments get their HNSW index; growing ones are searched by brute force.
        flush = partial(engine.client().flush, collection.engine_table())
        found = measure(collection, data, queries, truth, k, flush)
    finally:
        engine_process.stop()
    server = "milvus-lite server (one process, this machine)"
    return {"server": server, "index": "HNSW M=32 efConstruction=40 ef=64", **found}


def pgvector(tmp: Path, spec: CollectionSpec, data, queries, truth, k) -> dict[str, object]:
    pg_server.require()
    process = PgServer(tmp)
    try:
        engine = PgEngine(process.dsn, timeout_s=120)
        collection = PgCollection.create(engine, spec)
        found = measure(collection, data, queries, truth, k, lambda: None)  # HNSW per insert
        engine.close()
    finally:
        process.remove()
    server = "PostgreSQL 16 + pgvector 0.6 from the pgserver wheel (defaults, this machine)"
    index = "HNSW m=32 ef_construction=64 (pgvector's floor: 2 m) ef_search=64"
    return {"server": server, "index": index, **found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--backends", default="milvus,pgvector")
    args = parser.parse_args()
    data, queries = dataset(args.n, args.dim, args.queries, seed=0)

    flat = faiss.IndexFlatIP(args.dim)
    flat.add(data)
    start = time.perf_counter()
    for q in queries:
        flat.search(q[None], args.k)
    faiss_qps = len(queries) / (time.perf_counter() - start)
    _, truth = flat.search(queries, args.k)

    runs = {"milvus": milvus, "pgvector": pgvector}
    backends = args.backends.split(",")
    report: dict[str, object] = {"n": args.n, "dim": args.dim, "queries": args.queries}
    report["k"] = args.k
    spec = CollectionSpec("bench", args.dim, "cosine", index=IndexConfig(type="hnsw"))
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            found = runs[backend](Path(tmp), spec, data, queries, truth, args.k)
        report[backend] = found
        for key, value in found.items():
            print(f"{backend} {key}: {value}")
    report["faiss_flat"] = {"qps_batch_1": faiss_qps, "recall_at_10": 1.0}
    report["machine"] = machine(faiss=faiss.__version__)
    print(f"faiss flat q/s (batch 1): {faiss_qps:.0f}")
    save(report, f"backend-{'-'.join(backends)}-{args.n}x{args.dim}")


if __name__ == "__main__":
    main()
