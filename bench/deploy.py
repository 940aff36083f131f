"""What a deploy costs: its latency, and the latency of the requests that run through it.

Imports two versions of one open_clip architecture (random weights; the tiny test CLIP by
default, `--arch ViT-B-32` for the real size), serves them, fills a collection, then keeps
`--clients` clients calling Embed (one image and one text) and Search while it deploys
version 2, rolls back to version 1, and so on, `--deploys` times. Reports, from that one run:
- the deploy's latency as the client sees it, and the server's load + warm-up and swap times;
- request latency p50 / p99 in steady state (no change running), during the deploy call
  (load, warm-up, swap), and while the collection re-indexes in the background.

    python bench/deploy.py                      # tiny CLIP, CPU
    python bench/deploy.py --arch ViT-B-32      # the real size
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from harness import machine, save, start_server
from lens.v1 import index_pb2, index_pb2_grpc, inference_pb2, inference_pb2_grpc
from skimage import data

from lens_client import LensClient
from lens_server.repository import Repository
from lens_training.export.openclip import import_openclip

TINY = (
    Path(__file__).resolve().parents[1]
    / "training"
    / "lens_training"
    / "configs"
    / "lens-tiny-clip.json"
)


class Load:
    """Clients calling Embed and Search back to back; (start, seconds, ok) of every call."""

    def __init__(self, address: str, clients: int, image: bytes) -> None:
        self.calls: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(address, image), daemon=True)
            for _ in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, address: str, image: bytes) -> None:
        with grpc.insecure_channel(address) as channel:
            inference = inference_pb2_grpc.InferenceStub(channel)
            index = index_pb2_grpc.IndexStub(channel)
            embed = inference_pb2.EmbedRequest(
                inputs=[inference_pb2.Input(image=image), inference_pb2.Input(text="a cat")]
            )
            search = index_pb2.SearchRequest(
                collection="bench", query=index_pb2.Query(text="a cat"), k=10
            )
            while not self._stop.is_set():
                for call, request in ((inference.Embed, embed), (index.Search, search)):
                    start = time.perf_counter()
                    try:
                        call(request, timeout=60)
                        ok = True
                    except grpc.RpcError:
                        ok = False
                    self.calls.append((start, time.perf_counter() - start, ok))


def percentiles(calls: list[tuple[float, float, bool]], windows: list[tuple[float, float]]):
    inside = [s for t, s, _ in calls if any(a <= t < b for a, b in windows)]
    if not inside:
        return {"requests": 0}
    ms = 1000 * np.array(inside)
    return {
        "requests": len(inside),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default=str(TINY), help="open_clip architecture or file")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--deploys", type=int, default=4, help="deploys and rollbacks, alternating")
    parser.add_argument("--items", type=int, default=500, help="items in the collection")
    parser.add_argument("--steady-s", type=float, default=5.0, help="steady state between deploys")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    repo = Repository(Path(tempfile.mkdtemp(prefix="bench-deploy-")))
    for _ in range(2):
        import_openclip(repo, args.arch, "bench-model")
    process, address = start_server(repo.root, "--poll-s", "0")
    image = Path(tempfile.mkdtemp()) / "a.jpg"
    from PIL import Image

    Image.fromarray(data.astronaut()).save(image, quality=90)
    try:
        with LensClient(address, timeout=600) as lens:
            lens.deploy("bench-model", 1)
            lens.create_collection("bench", model="bench-model")
            texts = [f"item number {i}" for i in range(args.items)]
            lens.upsert("bench", ids=[str(i) for i in range(args.items)], texts=texts)
            steady, deploying, reindexing, deploys = [], [], [], []
            with Load(address, args.clients, image.read_bytes()) as load:
                for i in range(args.deploys):
                    time.sleep(args.steady_s / 2)
                    steady.append((time.perf_counter() - args.steady_s / 2, time.perf_counter()))
                    start = time.perf_counter()
                    result = lens.deploy("bench-model", 2 if i % 2 == 0 else 1)
                    called = time.perf_counter()
                    while lens.describe_collection("bench")["reindex"] is not None:
                        time.sleep(0.02)
                    indexed = time.perf_counter()
                    deploying.append((start, called))
                    reindexing.append((called, indexed))
                    deploys.append(
                        {
                            "to": result["version"],
                            "deploy_s": round(called - start, 4),
                            "load_s": round(result["load_seconds"], 4),
                            "swap_ms": round(1000 * result["swap_seconds"], 3),
                            "reindex_s": round(indexed - called, 3),
                        }
                    )
                    print(deploys[-1])
                time.sleep(args.steady_s / 2)
                steady.append((time.perf_counter() - args.steady_s / 2, time.perf_counter()))
            failed = sum(not ok for _, _, ok in load.calls)
    finally:
        process.terminate()
        process.wait(30)
    report = {
        "benchmark": "deploy",
        "arch": Path(args.arch).stem,
        "clients": args.clients,
        "items": args.items,
        "machine": machine(),
        "deploys": deploys,
        "deploy_s_median": float(np.median([d["deploy_s"] for d in deploys])),
        "failed_requests": failed,
        "latency": {
            "steady": percentiles(load.calls, steady),
            "during_deploy": percentiles(load.calls, deploying),
            "during_reindex": percentiles(load.calls, reindexing),
        },
    }
    for phase, figures in report["latency"].items():
        print(f"{phase:>15}: {figures}")
    print(f"failed requests: {failed} of {len(load.calls)}")
    save(report, f"deploy-{report['arch']}", args.out)


if __name__ == "__main__":
    main()
