"""The serving targets on a GPU, in one command, beside open_clip itself in torch.

    python bench/gpu.py                         # ViT-B-32 on the GPU: every figure below
    python bench/gpu.py --tiny --device cpu     # the same code on a tiny model (a test runs it)

1. Model only, preprocessed batches of `--batch` (256), on device tensors: images/s and texts/s
   of each runtime lens can choose (ONNX Runtime through IO binding; the fp16 program through
   CUDA graphs) and of open_clip's own model in torch fp16 (the reference figure), in one
   process, one after the other.
2. End to end through gRPC (`lens serve` as it configures itself): 640×480 JPEG bytes from
   `--clients` client processes in requests of `--request` images; then texts likewise.
3. One image per request, one client, nothing else running: p50 and p99.
4. Collections: exact search over `--n` × 512 unit vectors through `VectorIndex` as the server
   builds it on this machine (faiss-gpu, or the torch fp16 copy), batches of 1,024 queries and
   single queries.
Prints every figure beside its target and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import hot_frames, machine, sampled, save, start_server
from index import measure_exact
from serve import jpeg_inputs, latency, text_inputs

from lens_server.collections.faiss_index import IndexConfig, VectorIndex
from lens_server.config import RuntimeConfig
from lens_server.repository import Repository

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "lens_training" / "configs" / "lens-tiny-clip.json"
# (figure, target, whether higher is better): one H100, ViT-B-32.
TARGETS = (
    ("model_images_per_s", 28_000, True),
    ("model_texts_per_s", 27_000, True),
    ("e2e_images_per_s", 6_000, True),
    ("e2e_texts_per_s", 20_000, True),
    ("single_image_p50_ms", 8, False),
    ("single_image_p99_ms", 15, False),
    ("search_qps_batch1024", 100_000, True),
    ("search_p50_ms_batch1", 2, False),
)


def model_repository(repo: Path, arch: str, name: str) -> tuple[Repository, int]:
    """The repository holding `name` (imported from open_clip `arch` if it is not there)."""
    from lens_training.export.openclip import import_openclip

    repository = Repository(repo)
    if name not in repository.models():
        import_openclip(repository, arch, name)
    return repository, repository.latest(name)


def model_only(repository: Repository, name: str, version: int, arch: str, args: Any) -> dict:
    """Rows/s of every runtime on one preprocessed batch held on the device.

    The runtimes take turns, `--rounds` times, and each keeps its best round: a GPU that has
    been idle (during the export) runs its first second slower while its clocks rise, and
    whichever runtime went first would pay for that.
    """
    import open_clip
    import torch

    from lens_server.runtime.onnx import OnnxTower
    from lens_server.runtime.program import ProgramTower

    manifest, folder = repository.manifest(name, version), repository.path(name, version)
    device = torch.device(args.device)
    assert manifest.image and manifest.text
    size, context = manifest.image.size, manifest.text.context_length
    pixels = torch.randn(args.batch, 3, size, size, device=device)
    tokens = torch.randint(1, 1000, (args.batch, context), device=device)
    providers = ("CPUExecutionProvider",) if args.device == "cpu" else RuntimeConfig().providers
    config = RuntimeConfig(providers=providers)
    model = open_clip.create_model(arch).eval().to(device)
    half = device.type == "cuda"  # fp16 on the CPU is slow and not what anyone runs there
    if half:
        model = model.half()
    runs: dict[str, dict[str, Any]] = {"image": {}, "text": {}}
    for modality, spec, x in (("image", manifest.image, pixels), ("text", manifest.text, tokens)):
        runners: dict[str, tuple[Any, Any]] = {}
        onnx = OnnxTower(folder / spec.file, config, manifest.dim)
        if onnx.device == device.type:  # not onnxruntime without CUDA, on the host's cores
            runners["onnx"] = (onnx.run_device, x)
        if spec.program:
            program = ProgramTower(folder / spec.program, manifest.dim, args.device, args.batch)
            runners["program"] = (program.run_device, x)
        encode = model.encode_image if modality == "image" else model.encode_text
        runners["open_clip_torch"] = (encode, x.half() if half and modality == "image" else x)
        for _ in range(args.rounds):
            for runtime, (run, inputs) in runners.items():
                speed = rate(run, inputs, args.iterations, args.seconds)
                runs[modality][runtime] = max(speed, runs[modality].get(runtime, 0.0))
        del onnx, runners
    return runs


def rate(run: Any, x: Any, iterations: int, seconds: float) -> float:
    """Rows per second of `run(x)` after two warm-up calls, synchronised with the device:
    at least `iterations` calls, and at least `seconds`."""
    import torch

    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.inference_mode():
        for _ in range(2):
            run(x)
        sync()
        calls, start = 0, time.perf_counter()
        while calls < iterations or time.perf_counter() - start < seconds:
            run(x)  # queued work ahead of the device is waited for below, inside the timing
            calls += 1
        sync()
    return calls * len(x) / (time.perf_counter() - start)


def client(args: tuple[str, str, int, int, Any]) -> tuple[float, float, int]:
    """One client process: makes its `count` inputs, connects, waits for the others, sends
    them in requests of `request`; returns (start, end, count)."""
    from lens_client import LensClient

    address, kind, count, request, barrier = args
    items: list[Any] = jpeg_inputs(count) if kind == "images" else text_inputs(count)
    with LensClient(address, timeout=600) as lens:
        call = lens.embed_images if kind == "images" else lens.embed_texts
        call(items[:1])
        barrier.wait()
        start = time.perf_counter()
        call(items, batch_size=request)
        return start, time.perf_counter(), count


def end_to_end(address: str, args: Any) -> dict:
    """Items/s through gRPC with `args.clients` client processes sharing the work."""
    result = {}
    context = multiprocessing.get_context("spawn")
    with multiprocessing.Manager() as manager, context.Pool(args.clients) as pool:
        for kind, total in (("images", args.images), ("texts", args.texts)):
            barrier = manager.Barrier(args.clients)
            shares = [total // args.clients] * args.clients
            work = [(address, kind, n, args.request, barrier) for n in shares]
            done = pool.map(client, work)
            elapsed = max(end for _, end, _ in done) - min(start for start, _, _ in done)
            result[f"e2e_{kind}_per_s"] = sum(n for _, _, n in done) / elapsed
    return result


def search(args: Any) -> dict:
    """Exact search on this machine's flat index backend over `args.n` × 512."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.n, 512), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[rng.choice(args.n, args.queries, replace=False)]
    index = VectorIndex.build("flat", 512, "cosine", IndexConfig(), data[:0])
    sync = _device_sync()
    result = measure_exact(index, data, queries, None, args.single, sync)
    return {
        "search_backend": index.device,
        "search_qps_batch1024": result["search_qps_batch1024"],
        "search_p50_ms_batch1": result["p50_ms_batch1"],
        "search_p99_ms_batch1": result["p99_ms_batch1"],
        "search_add_per_s": result["add_per_s"],
    }


def _device_sync() -> Any:
    from lens_server.gpu import cuda_available

    if not cuda_available():
        return lambda: None
    import torch

    return torch.cuda.synchronize


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model, small sizes")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=50, help="model-only calls, at least")
    parser.add_argument("--seconds", type=float, default=1.0, help="model-only time, at least")
    parser.add_argument("--rounds", type=int, default=3, help="model-only turns per runtime")
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--texts", type=int, default=60_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--request", type=int, default=64, help="inputs per request")
    parser.add_argument("--single", type=int, default=300, help="single-input requests timed")
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors searched")
    parser.add_argument("--queries", type=int, default=10_240)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--profile", type=Path, default=None, help="the server's sampled stacks end to end (py-spy)"
    )
    args = parser.parse_args()
    arch, name = (str(TINY), "tiny-clip") if args.tiny else ("ViT-B-32", "clip-vit-b-32")

    repo = args.repo or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    repository, version = model_repository(repo, arch, name)
    arch_name = Path(arch).stem if arch.endswith(".json") else arch
    figures: dict[str, Any] = {}
    runs = model_only(repository, name, version, arch_name, args)
    if not any(runs["image"].get(k) for k in ("onnx", "program")):
        raise SystemExit(
            f"no runtime of {name} runs on {args.device}: onnxruntime has no provider for it "
            "and the version has no fp16 program (see the export's log)"
        )
    figures["model_images_per_s"] = max(
        v for k, v in runs["image"].items() if k != "open_clip_torch"
    )
    figures["model_texts_per_s"] = max(v for k, v in runs["text"].items() if k != "open_clip_torch")

    process, address = start_server(repo, "--default-model", name)
    try:
        with sampled(process.pid, args.profile):
            figures.update(end_to_end(address, args))
            single = latency(address, jpeg_inputs(1)[0], args.single)
        figures["single_image_p50_ms"] = single["p50_ms"]
        figures["single_image_p99_ms"] = single["p99_ms"]
        from lens_client import LensClient

        with LensClient(address) as lens:
            model = lens.get_model(name)
    finally:
        process.terminate()
        process.wait(30)
    figures.update(search(args))

    print(
        f"{arch_name} on {_versions()['gpu'] if args.device != 'cpu' else 'the CPU'}; "
        "the targets are for ViT-B-32 on one H100"
    )
    print(f"{'':26}{'measured':>12}{'target':>10}")
    for key, target, higher in TARGETS:
        value = figures[key]
        met = value >= target if higher else value <= target
        print(f"{key:26}{value:12,.1f}{target:10,}  {'met' if met else 'MISSED'}")
    for modality, by_runtime in runs.items():
        print(
            f"model only, {modality}: "
            + ", ".join(f"{k} {v:,.0f}/s" for k, v in by_runtime.items())
        )
    hot = hot_frames(args.profile) if args.profile and args.profile.exists() else []
    if hot:
        print(f"where the server's busy threads were, end to end ({args.profile}):")
        for frame, share in hot:
            print(f"  {share:6.1%}  {frame}")
    report = {
        "benchmark": "gpu",
        "machine": machine(**_versions()),
        "model": arch_name,
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("repo", "out")},
        "figures": figures,
        "targets": {k: {"target": t, "higher_is_better": h} for k, t, h in TARGETS},
        "model_only": runs,
        "served_version": model["versions"][-1],
        "server_profile": [{"frame": f, "share": round(v, 4)} for f, v in hot],
    }
    save(report, f"gpu-{arch_name}", args.out)


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "gpu": gpu}


if __name__ == "__main__":
    main()
