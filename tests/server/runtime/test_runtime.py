"""Runtimes: the fp16 program exported beside each ONNX tower, and the choice between them
(on the CPU here; the CUDA-graph path runs where a GPU is present)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from lens.v1 import common_pb2, inference_pb2, models_pb2, models_pb2_grpc

from lens_server import gpu
from lens_server.config import RuntimeConfig
from lens_server.errors import FailedPrecondition
from lens_server.repository import Repository
from lens_server.runtime.choose import PROGRAM_PARITY, Choice, _measure, open_tower
from lens_server.runtime.onnx import OnnxTower
from lens_server.runtime.program import ProgramTower
from lens_server.vectors import cosine_rows
from tests.conftest import TINY_ARCH, ServerProcess, encode, photo
from tests.server.test_grpc import TEXTS, embed, images_in_formats, matrix

CPU = RuntimeConfig(providers=("CPUExecutionProvider",))


def _version(repo: Path) -> tuple[dict, Path]:
    folder = repo / "tiny" / "1"
    return json.loads((folder / "manifest.json").read_text()), folder


def _image_probe(n: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 3, 32, 32)).astype(np.float32)


def test_export_writes_fp16_programs_that_passed_parity(tiny_repo):
    manifest, folder = _version(tiny_repo)
    for modality in ("image", "text"):
        file = manifest[modality]["program"]
        assert file == f"{modality}.pt2" and (folder / file).is_file()
        assert file in manifest["files"]
        figures = manifest["parity"][f"{modality}.program"]
        assert figures["threshold"] == 0.999 and figures["min_cosine"] >= 0.999
    assert manifest["opset"] == 23
    # The image program holds the image tower's weights only, in fp16.
    image_weights = (folder / "image.pt2").stat().st_size
    assert image_weights < (folder / "text.pt2").stat().st_size / 4


def test_program_runs_the_tower_in_fp16_like_onnx(tiny_repo):
    manifest, folder = _version(tiny_repo)
    onnx = OnnxTower(folder / "image.onnx", CPU, manifest["dim"])
    program = ProgramTower(folder / "image.pt2", manifest["dim"], "cpu", max_batch=8)
    assert program.input_dtype == torch.float16 and program.providers == ["torch-fp16:cpu"]
    for n in (1, 3, 8, 20):  # a free batch axis
        x = _image_probe(n)
        out = program(x)
        assert out.dtype == np.float32 and out.shape == (n, manifest["dim"])
        assert cosine_rows(onnx(x), out).min() >= PROGRAM_PARITY


def test_a_program_is_moved_whole_to_its_device(tiny_repo):
    # The exporter writes the device it traced on (the CPU) into the graph's tensor checks; a
    # program loaded for another device must name that one everywhere, or it fails there.
    manifest, folder = _version(tiny_repo)
    program = ProgramTower(folder / "image.pt2", manifest["dim"], "meta", max_batch=8)
    nodes = program._module.graph.nodes
    devices = {torch.device(n.kwargs["device"]) for n in nodes if "device" in n.kwargs}
    tensors = [*program._module.parameters(), *program._module.buffers()]
    assert devices == {torch.device("meta")} and all(t.is_meta for t in tensors)


def test_auto_without_a_gpu_is_onnx_unmeasured(tiny_repo):
    manifest, folder = _version(tiny_repo)
    choice = open_tower(
        folder / "image.onnx", folder / "image.pt2", manifest["dim"], CPU, 8, _image_probe
    )
    assert choice.runtime == "onnx" and isinstance(choice.tower, OnnxTower)
    (trial,) = choice.trials
    assert trial.items_per_second == 0 and trial.providers == ("CPUExecutionProvider",)


def test_measured_choice_takes_the_faster_runtime_within_parity(tiny_repo):
    manifest, folder = _version(tiny_repo)
    onnx = OnnxTower(folder / "image.onnx", CPU, manifest["dim"])
    choice = _measure(onnx, folder / "image.pt2", manifest["dim"], "cpu", "auto", 8, _image_probe)
    onnx_trial, program_trial = choice.trials
    assert onnx_trial.items_per_second > 0 and program_trial.items_per_second > 0
    assert program_trial.min_cosine >= PROGRAM_PARITY and not program_trial.error
    faster = max(choice.trials, key=lambda t: t.items_per_second)
    assert choice.runtime == faster.runtime


def test_a_program_that_misses_parity_is_not_used(tiny_repo, tmp_path):
    """The program of another model (different weights) behind this model's ONNX graph."""
    import open_clip

    from lens_training.export.openclip import import_openclip

    torch.manual_seed(1)
    other = open_clip.create_model(TINY_ARCH.stem)
    checkpoint = tmp_path / "other.pt"
    torch.save(other.state_dict(), checkpoint)
    import_openclip(Repository(tmp_path), str(TINY_ARCH), "other", pretrained=str(checkpoint))
    wrong = tmp_path / "other" / "1" / "image.pt2"
    manifest, folder = _version(tiny_repo)
    onnx = OnnxTower(folder / "image.onnx", CPU, manifest["dim"])
    choice = _measure(onnx, wrong, manifest["dim"], "cpu", "auto", 8, _image_probe)
    assert choice.runtime == "onnx"
    assert "cosine" in choice.trials[1].error and choice.trials[1].min_cosine < PROGRAM_PARITY
    with pytest.raises(FailedPrecondition, match="cannot serve: cosine"):
        _measure(onnx, wrong, manifest["dim"], "cpu", "program", 8, _image_probe)


def test_forcing_the_program_without_one_is_refused(tiny_repo):
    manifest, folder = _version(tiny_repo)
    forced = dataclasses.replace(CPU, engine="program")
    with pytest.raises(FailedPrecondition, match="no fp16 program"):
        open_tower(folder / "image.onnx", None, manifest["dim"], forced, 8, _image_probe)
    choice = open_tower(folder / "image.onnx", None, manifest["dim"], CPU, 8, _image_probe)
    assert isinstance(choice, Choice) and choice.runtime == "onnx"


def test_server_on_the_program_runtime(tiny_repo, channel):
    """`lens serve --runtime program` (here on the CPU) answers like the ONNX server, and
    GetModel says what runs each tower."""
    images = [*images_in_formats(), encode(photo("coffee"), "JPEG")]
    texts = [inference_pb2.Input(text=t) for t in TEXTS]
    inputs = [inference_pb2.Input(image=b) for b in images] + texts
    expected = matrix(embed(channel, *inputs))
    server = ServerProcess(tiny_repo, "--runtime", "program", "--max-batch-size", "8")
    try:
        with grpc.insecure_channel(server.address) as ours:
            got = matrix(embed(ours, *inputs))
            assert cosine_rows(expected, got).min() >= PROGRAM_PARITY
            info = models_pb2_grpc.ModelsStub(ours).GetModel(
                models_pb2.GetModelRequest(name="tiny"), timeout=10
            )
    finally:
        server.stop()
    (version,) = info.versions
    runtimes = {r.modality: r for r in version.runtimes}
    for modality in (common_pb2.MODALITY_IMAGE, common_pb2.MODALITY_TEXT):
        runtime = runtimes[modality]
        assert runtime.runtime == "program"
        onnx_trial, program_trial = runtime.trials
        assert onnx_trial.runtime == "onnx" and program_trial.providers == ["torch-fp16:cpu"]
        assert program_trial.min_cosine >= PROGRAM_PARITY
    assert "torch-fp16:cpu" in version.providers
    # What it holds is the programs' weights, not the graphs'.
    folder = tiny_repo / "tiny" / "1"
    held = sum((folder / f"{m}.pt2").stat().st_size for m in ("image", "text"))
    assert version.memory_bytes == held


def test_default_server_reports_onnx(channel):
    info = models_pb2_grpc.ModelsStub(channel).GetModel(
        models_pb2.GetModelRequest(name="tiny"), timeout=10
    )
    (version,) = info.versions
    assert [r.runtime for r in version.runtimes] == ["onnx", "onnx"]
    assert all(len(r.trials) == 1 for r in version.runtimes)


def test_version_without_programs_still_serves(tiny_repo, tmp_path):
    """Versions exported before programs existed (no `program` in the manifest) load as before."""
    from lens_server.repository.manifest import sha256

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny", repo / "tiny")
    folder = repo / "tiny" / "1"
    manifest = json.loads((folder / "manifest.json").read_text())
    for modality in ("image", "text"):
        (folder / manifest[modality].pop("program")).unlink()
        manifest["files"].pop(f"{modality}.pt2")
        manifest["parity"].pop(f"{modality}.program")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert all(sha256(folder / f) == h for f, h in manifest["files"].items())
    server = ServerProcess(repo)
    try:
        with grpc.insecure_channel(server.address) as ours:
            assert matrix(embed(ours, inference_pb2.Input(text="a cat"))).shape == (1, 32)
    finally:
        server.stop()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_match_eager_for_every_bucket(tiny_repo):
    manifest, folder = _version(tiny_repo)
    program = ProgramTower(folder / "image.pt2", manifest["dim"], "cuda", max_batch=32)
    onnx = OnnxTower(folder / "image.onnx", CPU, manifest["dim"])
    for n in (1, 5, 8, 9, 32, 40):  # in buckets, padded into them, and above the largest
        x = _image_probe(n)
        assert cosine_rows(onnx(x), program(x)).min() >= PROGRAM_PARITY


def test_server_decoding_images_on_the_device(tiny_repo, channel):
    """`--image-decode device` (here the CPU device: torchvision's decoder, torch's resize)
    embeds like the Pillow path, and a JPEG that is corrupt past its header fails alone."""
    jpegs = [encode(photo(name), "JPEG", quality=90) for name in ("astronaut", "chelsea", "page")]
    inputs = [inference_pb2.Input(image=b) for b in [*images_in_formats(), *jpegs]]
    expected = matrix(embed(channel, *inputs))
    server = ServerProcess(tiny_repo, "--image-decode", "device", "--max-batch-size", "8")
    try:
        with grpc.insecure_channel(server.address) as ours:
            got = matrix(embed(ours, *inputs))
            assert cosine_rows(expected, got).min() >= 0.999
            truncated = jpegs[0][: len(jpegs[0]) // 2]
            with pytest.raises(grpc.RpcError) as failed:
                embed(ours, inputs[0], inputs[1], inference_pb2.Input(image=truncated))
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert failed.value.details().startswith("input 2:"), failed.value.details()
            again = matrix(embed(ours, *inputs[:3]))
            np.testing.assert_allclose(again, got[:3], atol=1e-6)
    finally:
        server.stop()


def test_gpu_benchmark_runs(tmp_path):
    """bench/gpu.py, which measures the GPU serving targets, runs end to end (tiny, CPU)."""
    import subprocess

    from tests.conftest import LENS, ROOT

    out = tmp_path / "gpu.json"
    options = "--device cpu --images 64 --texts 128 --clients 2 --single 10 --batch 16"
    options += " --iterations 2 --seconds 0 --rounds 2 --n 5000 --queries 1024"
    command = [str(LENS.with_name("python")), str(ROOT / "bench" / "gpu.py"), "--tiny"]
    result = subprocess.run(
        [*command, *options.split(), "--repo", str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["targets"]) <= set(report["figures"])
    assert all(report["figures"][k] > 0 for k in report["targets"])
    assert set(report["model_only"]["image"]) == {"onnx", "program", "open_clip_torch"}
    assert report["figures"]["search_backend"] == "cpu"
    assert [r["runtime"] for r in report["served_version"]["runtimes"].values()] == ["onnx"] * 2


def test_the_cpu_serving_path_does_not_import_torch(tiny_repo):
    """Without the NVIDIA driver, opening a version's towers (programs present) and building
    a flat collection index leave torch unimported: the CPU path is what it was."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = f"""
import sys
from pathlib import Path
import numpy as np
from lens_server.config import ServerConfig
from lens_server.model import open_towers
from lens_server.repository import Repository
from lens_server.collections.faiss_index import IndexConfig, VectorIndex
repo = Repository(Path({str(tiny_repo)!r}))
towers = open_towers(repo.manifest("tiny", 1), repo.path("tiny", 1), ServerConfig())
index = VectorIndex.build("flat", 32, "cosine", IndexConfig(), np.empty((0, 32), np.float32))
assert [c.runtime for c in towers.values()] == ["onnx", "onnx"] and index.device == "cpu"
print("torch" in sys.modules)
"""
    if gpu.driver_present():  # where gpu.cuda_available() imports torch
        pytest.skip("this machine has the NVIDIA driver: torch decides there")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_where_images_are_decoded(tiny_repo):
    """`image_decode`: auto stays on the CPU without a GPU, device takes the tower's device,
    cpu never; a spec the device cannot resize is refused when the device is insisted on."""
    from lens_server.config import Limits
    from lens_server.pipeline import DeviceImages, image_pipeline
    from lens_server.preprocess import ImagePreprocessor
    from lens_server.repository.manifest import ImageSpec

    manifest, folder = _version(tiny_repo)
    tower = OnnxTower(folder / "image.onnx", CPU, manifest["dim"])
    spec = ImageSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    cpu = ImagePreprocessor(spec, Limits())

    def pipeline(mode: str, spec: ImageSpec = spec):
        config = dataclasses.replace(CPU, image_decode=mode)
        return image_pipeline(spec, config, ImagePreprocessor(spec, Limits()), tower)

    assert pipeline("auto") is None and pipeline("cpu") is None
    assert isinstance(pipeline("device"), DeviceImages)
    lanczos = dataclasses.replace(spec, interpolation="lanczos")
    with pytest.raises(FailedPrecondition, match="lanczos"):
        pipeline("device", lanczos)
    # A PNG is preprocessed on the CPU at once; a JPEG goes on as bytes.
    images = pipeline("device")
    assert images is not None
    png, jpeg = encode(photo("chelsea"), "PNG"), encode(photo("chelsea"), "JPEG")
    position, pixels = images.admit(png, 4)
    assert position == 4 and isinstance(pixels, np.ndarray)
    np.testing.assert_array_equal(pixels, cpu(png))
    assert images.admit(jpeg, 5) == (5, jpeg)
