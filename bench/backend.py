"""The Milvus backend against FAISS flat: search q/s and recall@10 on the same N × 512 set.

A real `milvus-lite server` process (temp data dir) holds one lens collection
(`MilvusCollection`, HNSW with lens's defaults: M 32, efConstruction 40, ef 64); the same
vectors go into a FAISS flat index in this process, which gives the exact top-10. Measured:
the upsert rate through lens's backend (batches of 1,000, each acknowledged by the engine),
the flush that seals the segments (so that HNSW serves them), queries/s one query per call
and in batches of 100, and recall@10 of Milvus's hits against
FAISS flat; FAISS flat's own q/s for comparison. Vectors as in bench/index.py (unit vectors
around 1,000 centres). JSON lands in bench/results/.

    python bench/backend.py                     # 20,000 × 512
    python bench/backend.py --n 1000000         # where the time allows
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from harness import machine, save
from index import dataset

from lens_server.collections import CollectionSpec, IndexConfig, NewItem
from lens_server.collections.milvus import MilvusCollection
from lens_server.collections.milvus_engine import MilvusEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.server.collections.milvus_server import MilvusServer


def recall(found: list[list[str]], truth: np.ndarray) -> float:
    hits = [
        len({int(i) for i in row} & set(t.tolist())) for row, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits) / truth.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    data, queries = dataset(args.n, args.dim, args.queries, seed=0)

    flat = faiss.IndexFlatIP(args.dim)
    flat.add(data)
    start = time.perf_counter()
    for q in queries:
        flat.search(q[None], args.k)
    faiss_qps = len(queries) / (time.perf_counter() - start)
    _, truth = flat.search(queries, args.k)

    with tempfile.TemporaryDirectory() as tmp:
        engine_process = MilvusServer(Path(tmp) / "milvus")
        try:
            engine = MilvusEngine(engine_process.uri, timeout_s=120)
            spec = CollectionSpec("bench", args.dim, "cosine", index=IndexConfig(type="hnsw"))
            collection = MilvusCollection.create(engine, spec)
            start = time.perf_counter()
            for s in range(0, args.n, 1000):
                collection.upsert(
                    [
                        NewItem(str(i), data[i], "{}", "vector", None)
                        for i in range(s, min(args.n, s + 1000))
                    ]
                )
            upsert_s = time.perf_counter() - start
            print(f"upserted {args.n} in {upsert_s:.1f} s ({args.n / upsert_s:.0f}/s)")
            start = time.perf_counter()
            # Sealed segments get their HNSW index; growing ones are searched by brute force.
            engine.client().flush(collection.engine_table())
            flush_s = time.perf_counter() - start
            collection.search(queries[:1], args.k)  # warm
            start = time.perf_counter()
            single = [[h.id for h in collection.search(q[None], args.k)[0]] for q in queries]
            single_qps = len(queries) / (time.perf_counter() - start)
            start = time.perf_counter()
            batched: list[list[str]] = []
            for s in range(0, len(queries), 100):
                batched += [
                    [h.id for h in row] for row in collection.search(queries[s : s + 100], args.k)
                ]
            batch_qps = len(queries) / (time.perf_counter() - start)
        finally:
            engine_process.stop()
    report = {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "milvus": {
            "server": "milvus-lite server (one process, this machine)",
            "index": "HNSW M=32 efConstruction=40 ef=64",
            "upsert_per_s": args.n / upsert_s,
            "flush_s": flush_s,
            "qps_batch_1": single_qps,
            "qps_batch_100": batch_qps,
            "recall_at_10": recall(single, truth),
            "recall_at_10_batched": recall(batched, truth),
        },
        "faiss_flat": {"qps_batch_1": faiss_qps, "recall_at_10": 1.0},
        "machine": machine(faiss=faiss.__version__),
    }
    for key, value in report["milvus"].items():
        print(f"milvus {key}: {value}")
    print(f"faiss flat q/s (batch 1): {faiss_qps:.0f}")
    save(report, f"backend-milvus-{args.n}x{args.dim}")


if __name__ == "__main__":
    main()
