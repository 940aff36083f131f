"""int8 against fp32 on the CPU: the same checkpoint imported both ways, served side by side.

One run, on one machine, same photos and checkpoint:
- imports the checkpoint (made with seed 0 when missing: random-init weights) twice, with
  `lens import openclip` and with `lens import openclip --quantize int8`, into two repositories
  under the work folder (kept, so a second run skips the imports);
- starts a server on each, checks that both serve (cosine of their vectors on the photos and
  texts, beside the parity and gate their manifests record);
- images/s and texts/s through each server with N concurrent clients (JPEG bytes in), and
  open_clip's own pipeline in torch in-process, in waves that take turns so a busy neighbour
  slows every side alike; ratios are medians of the waves' paired ratios.
Prints a table and writes JSON to bench/results/.

    python bench/int8.py --arch ViT-B-32 --gate 0.98      # random-init ViT-B-32
    python bench/int8.py --tiny                           # the tiny test model, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from harness import machine, save, serve
from serve import jpeg_inputs, open_clip_torch, text_inputs, through_server

from lens_client import LensClient
from lens_server.vectors import cosine_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "lens_training" / "configs" / "lens-tiny-clip.json"
LENS = Path(sys.executable).with_name("lens")


def checkpoint(arch: str, path: Path) -> Path:
    """The checkpoint both imports read: open_clip's `arch` (a name it knows) at seed 0,
    unless `path` exists."""
    if not path.is_file():
        import open_clip
        import torch

        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(open_clip.create_model(arch).state_dict(), path)
    return path


def imported(repo: Path, arch: str, weights: Path, name: str, *quantize: str) -> dict[str, Any]:
    """`lens import openclip` of `weights` into `repo` (nothing if there already); the
    version's manifest."""
    command = [str(LENS), "import", "openclip", "--arch", arch, "--pretrained", str(weights)]
    command += ["--name", name, "--repo", str(repo), "--if-missing", *quantize]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"import failed: {done.stderr[-2000:]}")
    print(done.stdout.strip())
    return json.loads((repo / name / "1" / "manifest.json").read_text())


def served_parity(fp32: str, int8: str, images: list[bytes], texts: list[str]) -> dict[str, float]:
    """Lowest cosine between the two servers' vectors for the same inputs."""
    with LensClient(fp32, timeout=600) as a, LensClient(int8, timeout=600) as b:
        return {
            "images_min_cosine": float(
                cosine_rows(
                    np.asarray(a.embed_images(images)), np.asarray(b.embed_images(images))
                ).min()
            ),
            "texts_min_cosine": float(
                cosine_rows(
                    np.asarray(a.embed_texts(texts)), np.asarray(b.embed_texts(texts))
                ).min()
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "lens-bench-int8"
    )
    parser.add_argument("--name", default="model", help="the model's name in both repositories")
    parser.add_argument("--gate", type=float, default=None, help="--parity-gate of the import")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-torch", action="store_true", help="skip open_clip in torch")
    parser.add_argument("--tiny", action="store_true", help="the tiny model, small and quick")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.tiny:
        args.arch, args.images, args.texts, args.waves = str(TINY), 16, 32, 2
    name = args.arch
    if args.arch.endswith(".json"):  # an architecture file, known to open_clip by its stem
        import open_clip

        open_clip.add_model_config(args.arch)
        name = Path(args.arch).stem
    weights = checkpoint(name, args.work / f"{name}-seed0.pt")
    gate = ["--parity-gate", str(args.gate)] if args.gate else []
    manifests = {
        "fp32": imported(args.work / "fp32", args.arch, weights, args.name),
        "int8": imported(
            args.work / "int8", args.arch, weights, args.name, "--quantize", "int8", *gate
        ),
    }
    images, texts = jpeg_inputs(args.images), text_inputs(args.texts)
    options = ["--max-batch-size", str(args.batch), "--decode-workers", str(args.workers)]
    servers = {kind: serve(args.work / kind, *options) for kind in manifests}
    waves: list[dict[str, Any]] = []
    try:
        addresses = {kind: s.address for kind, s in servers.items()}
        check = served_parity(addresses["fp32"], addresses["int8"], images[:6], texts[:16])
        for _ in range(args.waves):
            wave = {
                kind: through_server(address, images, texts, args.batch, args.clients)
                for kind, address in addresses.items()
            }
            if not args.no_torch:
                wave["open_clip_torch"] = open_clip_torch(name, images, args.batch, args.workers)
            waves.append(wave)
            print(json.dumps(wave))
    finally:
        for s in servers.values():
            s.process.terminate()
            s.process.wait(30)

    def median(side: str, key: str, over: str) -> float:
        return float(np.median([w[side][key] / w[over][key] for w in waves]))

    ratios = {
        f"int8_vs_fp32_{k}": median("int8", k, "fp32") for k in ("images_per_s", "texts_per_s")
    }
    if not args.no_torch:
        for side in ("int8", "fp32"):
            ratios[f"{side}_vs_open_clip_torch_images_per_s"] = median(
                side, "images_per_s", "open_clip_torch"
            )
    recorded = {
        tower: {
            "min_cosine": manifests["int8"]["parity"][tower]["min_cosine"],
            "gate": manifests["int8"]["parity"][tower]["threshold"],
            "fp32_min_cosine_to_source": manifests["fp32"]["parity"][tower]["min_cosine"],
        }
        for tower in ("image", "text")
    }
    report = {
        "benchmark": "int8",
        "machine": machine(onnxruntime=ort.__version__, cpu_flags=_cpu_flags()),
        "arch": args.arch,
        "checkpoint": str(weights),
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("out",)},
        "quantization": manifests["int8"]["quantization"],
        "parity": recorded,
        "served_parity": check,
        "ratios": ratios,
        "median": {
            side: {k: float(np.median([w[side][k] for w in waves])) for k in waves[0][side]}
            for side in waves[0]
        },
        "waves": waves,
    }
    print(f"\n{name}, {args.images} photos, {args.texts} texts, {args.waves} waves (medians)")
    for side, figures in report["median"].items():
        print(f"  {side:16}" + "".join(f"{k} {v:8.1f}   " for k, v in figures.items()))
    for key, ratio in ratios.items():
        print(f"  {key:42}{ratio:7.2f}x")
    for tower, figures in recorded.items():
        print(
            f"  {tower} parity int8 vs fp32 {figures['min_cosine']:.6f} (gate {figures['gate']}), "
            f"served {check[f'{tower}s_min_cosine']:.6f}"
        )
    save(report, f"int8-{name}", args.out)


def _cpu_flags() -> str:
    """The vector extensions that decide int8 speed (AVX2, AVX-512, VNNI, AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        return ""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return ",".join(f for f in wanted if f in flags)


if __name__ == "__main__":
    main()
