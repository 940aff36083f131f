"""Training runs end to end on CPU: exact resume, export served by the real server, --init,
and the `lens train` / `lens export` commands with their errors."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from lens.v1 import common_pb2, inference_pb2, inference_pb2_grpc

from lens_server.repository import Repository
from lens_training.config import TrainConfig, TrainError
from lens_training.export.trained import export_run, load_run
from lens_training.loop import Trainer
from tests.conftest import LENS, ServerProcess, encode, photo

ARCH = {
    "clip": "lens-tiny-clip",
    "simclr": "lens-tiny-vit",
    "mae": "lens-tiny-vit",
    "moco": "lens-tiny-resnet",
    "byol": "lens-tiny-resnet",
}
# narrow heads and a short queue: these runs check plumbing, not quality
SETTINGS = {"moco": {"projector_dim": 32, "queue": 64}, "byol": {"projector_dim": 32}}


def config(method: str, out, **overrides) -> TrainConfig:
    values = dict(
        method=method,
        data="digits",
        arch=ARCH[method],
        out=str(out),
        steps=4,
        batch_size=32,
        holdout=300,
        device="cpu",
        baseline=False,
        lr=1e-3,
        optimizer="adamw",
    )
    return TrainConfig(**{**values, **SETTINGS.get(method, {}), **overrides})


@pytest.mark.parametrize("method", ["clip", "simclr", "mae", "moco", "byol"])
def test_resume_continues_exactly(tmp_path, method):
    """Bit for bit, momentum networks and MoCo's queue included."""
    straight = Trainer(config(method, tmp_path / "straight"))
    straight.run()
    halves = Trainer(config(method, tmp_path / "halves"))
    halves.run(until=2)
    resumed = Trainer(config(method, tmp_path / "halves"), resume=True)
    assert resumed.step == 2
    resumed.run()
    want, got = straight.method.state_dict(), resumed.method.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    lines = [
        json.loads(x) for x in (tmp_path / "halves" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]


@pytest.mark.parametrize("method", ["clip", "simclr", "mae", "moco"])
def test_export_serves_and_matches_pytorch(tmp_path, tiny_repo, method):
    Trainer(config(method, tmp_path / "run")).run()
    repo = Repository(tmp_path / "repo")
    version, path = export_run(repo, tmp_path / "run", f"trained-{method}")
    manifest = repo.manifest(f"trained-{method}", version)
    assert manifest.kind == method and manifest.parity["image"]["min_cosine"] >= 0.99999
    assert (path / "checkpoint.pt").is_file() and "projection" not in str(manifest.extra)
    assert (
        manifest.extra["training"]["method"] == method and "knn_top1" in manifest.extra["metrics"]
    )
    assert (manifest.text is not None) == (method == "clip")

    _, trained = load_run(tmp_path / "run")
    if method == "moco":  # the query encoder is served; the key encoder and queue are not
        assert not torch.equal(
            next(trained.encoder.parameters()), next(trained.key_encoder.parameters())
        )
        assert manifest.dim == 64 and manifest.extra["training"]["queue"] == 64
    if method == "mae":  # the whitening fitted on the training images is part of the encoder
        assert not torch.equal(trained.whiten.matrix, torch.eye(len(trained.whiten.matrix)))
    image = encode(photo("coffee"), "PNG")
    proc = ServerProcess(tmp_path / "repo")
    try:
        with grpc.insecure_channel(proc.address) as channel:
            inputs = [inference_pb2.Input(image=image)]
            if method == "clip":
                inputs.append(inference_pb2.Input(text="a photo of the number seven."))
            response = inference_pb2_grpc.InferenceStub(channel).Embed(
                inference_pb2.EmbedRequest(
                    inputs=inputs, model=common_pb2.ModelRef(name=f"trained-{method}")
                ),
                timeout=30,
            )
    finally:
        proc.stop()
    got = np.frombuffer(response.embeddings.data, "<f4").reshape(len(inputs), -1)

    from lens_server.preprocess import ImagePreprocessor

    pixels = torch.from_numpy(ImagePreprocessor(manifest.image)(image)[None])
    with torch.no_grad():
        want = [trained.image_encoder()(pixels)[0]]
        if method == "clip":
            import open_clip

            tokens = open_clip.SimpleTokenizer()(["a photo of the number seven."])
            want.append(trained.encode_text(tokens)[0])
    want_np = torch.nn.functional.normalize(torch.stack(want), dim=-1).numpy()
    assert np.sum(got * want_np, axis=1).min() >= 0.9999


def check_image_only_classification(channel, model: str, image: bytes) -> None:
    """Image-only encoders classify few-shot; zero-shot labels are refused with the reason."""
    from lens.v1 import classifiers_pb2, classifiers_pb2_grpc

    ref = common_pb2.ModelRef(name=model)
    with pytest.raises(grpc.RpcError) as err:
        inference_pb2_grpc.InferenceStub(channel).Classify(
            inference_pb2.ClassifyRequest(
                images=[image], model=ref, labels=classifiers_pb2.Labels(labels=["a", "b"])
            ),
            timeout=30,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no text tower" in err.value.details()
    other = encode(photo("astronaut"), "PNG")
    classifiers_pb2_grpc.ClassifiersStub(channel).CreateClassifier(
        classifiers_pb2.CreateClassifierRequest(
            name=f"{model}-few",
            model=ref,
            few_shot=classifiers_pb2.FewShot(
                classes=[
                    classifiers_pb2.Examples(label="coffee", images=[image]),
                    classifiers_pb2.Examples(label="astronaut", images=[other]),
                ]
            ),
        ),
        timeout=30,
    )
    response = inference_pb2_grpc.InferenceStub(channel).Classify(
        inference_pb2.ClassifyRequest(images=[other, image], saved=f"{model}-few"), timeout=30
    )
    assert [r.labels[0].label for r in response.results] == ["astronaut", "coffee"]


def test_init_from_an_imported_open_clip_version(tmp_path, tiny_repo):
    trainer = Trainer(config("clip", tmp_path / "ft", arch="", init="tiny", repo=str(tiny_repo)))
    saved = torch.load(tiny_repo / "tiny" / "1" / "checkpoint.pt", weights_only=False)
    state = trainer.method.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved["model"].items())
    with pytest.raises(TrainError, match="checkpoint is a clip model, not simclr"):
        Trainer(
            config(
                "simclr", tmp_path / "bad", arch="lens-tiny-clip", init="tiny", repo=str(tiny_repo)
            )
        )


def lens(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(LENS), *args], capture_output=True, text=True, timeout=timeout)


def test_lens_train_and_export_commands(tmp_path):
    repo = tmp_path / "repo"
    result = lens(
        "train",
        "simclr",
        "--data",
        "digits",
        "--arch",
        "lens-tiny-vit",
        "--steps",
        "3",
        "--batch-size",
        "32",
        "--holdout",
        "300",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
        "--export",
        "digits-simclr",
        "--repo",
        str(repo),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.splitlines()[0])
    assert summary["steps"] == 3 and "knn_top1" in summary["eval"]
    assert "knn_top1" in summary["random_init"]
    assert "digits-simclr: version 1 written" in result.stdout
    again = lens("export", str(tmp_path / "run"), "--name", "digits-simclr", "--repo", str(repo))
    assert again.returncode == 0 and "version 2 written" in again.stdout
    assert_watchable(tmp_path / "run", result.stderr, steps=3)


def assert_watchable(run: Path, stderr: str, steps: int) -> None:
    """What a run shows as it goes and leaves behind: a progress bar with the loss, its curves
    in metrics.jsonl (a record per step, then the final evaluation), report.png and
    embedding.png."""
    from PIL import Image

    assert re.search(rf"{steps}/{steps} .*loss=\d", stderr), stderr[-1000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    per_step = [r for r in records if "loss" in r]
    assert [r["step"] for r in per_step] == list(range(1, steps + 1))
    assert all(r["lr"] >= 0 and r["images_per_s"] > 0 for r in per_step)
    assert any(r["lr"] > 0 for r in per_step)
    assert records[0].get("baseline") and records[-1].get("final")
    assert "knn_top1" in records[-1]["eval"]
    for name, size in [("report.png", (1100, 700)), ("embedding.png", (700, 600))]:
        with Image.open(run / name) as picture:
            assert picture.format == "PNG" and picture.size == size
            assert len(picture.getcolors(1 << 16) or range(1 << 16)) > 10  # drawn, not blank


def test_quiet_runs_show_no_progress_bar(tmp_path):
    run = tmp_path / "run"
    common = ["train", "simclr", "--data", "digits", "--arch", "lens-tiny-vit", "--steps", "2"]
    result = lens(
        *common,
        "--batch-size",
        "16",
        "--holdout",
        "200",
        "--device",
        "cpu",
        "--out",
        str(run),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step/s" not in result.stderr and "loss=" not in result.stderr
    assert (run / "report.png").is_file() and (run / "embedding.png").is_file()


def assert_refused(result: subprocess.CompletedProcess, code: int, message: str) -> None:
    """A refusal: exit status `code`, and one line on stderr that says `message`."""
    assert result.returncode == code, result.stderr[-2000:]
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train", "dino", "--data", "digits"], 2, "unknown method 'dino'"),
        (["train", "swav", "--data", "digits"], 2, "use clip, simclr, mae, moco, byol, barlow"),
        (["train", "mae", "--data", "/no/such/folder"], 1, "/no/such/folder"),
        (["train", "mae", "--data", "digits", "--arch", "No-Such-Arch"], 1, "unknown architecture"),
        (["train", "mae", "--data", "digits", "--arch", "lens-tiny-resnet"], 1, "needs a ViT"),
        (["export", "/no/such/run", "--name", "x"], 1, "no checkpoint.pt"),
    ],
)
def test_train_errors_are_one_line(tmp_path, args, code, message):
    result = (
        lens(*args, "--repo", str(tmp_path))
        if args[0] == "export"
        else lens(*args, "--out", str(tmp_path / "run"))
    )
    assert_refused(result, code, message)
    # nothing left behind: no run folder (train), no version or staging folder (export)
    assert list(tmp_path.iterdir()) == []


def test_device_cuda_trains_where_there_is_a_gpu_and_is_refused_elsewhere(tmp_path):
    from lens_server.gpu import cuda_available

    run = tmp_path / "run"
    args = ["train", "mae", "--data", "digits", "--device", "cuda", "--out", str(run)]
    if not cuda_available():
        assert_refused(lens(*args), 1, "--device cuda: no CUDA device on this machine")
        assert not run.exists()
        return
    result = lens(*args, "--steps", "1", "--batch-size", "32", "--holdout", "300")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[0])["steps"] == 1
    assert (run / "checkpoint.pt").is_file()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--temperature", "0", "temperature must be finite and > 0, got 0.0"),
        ("--temperature", "-0.5", "temperature must be finite and > 0, got -0.5"),
        ("--steps", "-1", "steps must be >= 0 (0: from epochs), got -1"),
        ("--epochs", "0", "epochs must be finite and > 0, got 0.0"),
        ("--batch-size", "1", "batch_size must be >= 2, got 1"),
        ("--accum", "0", "accum must be >= 1, got 0"),
        ("--accum", "3", "batch_size 256 must be divisible by accum 3"),
        ("--lr", "-0.001", "lr must be finite and >= 0 (0: the method's), got -0.001"),
        ("--holdout", "0", "holdout must be a whole count >= 1 or a fraction < 1, got 0.0"),
        ("--holdout", "2.5", "holdout must be a whole count >= 1 or a fraction < 1, got 2.5"),
        ("--holdout", "1797", "holdout 1797 must be less than the 1797 images of digits"),
        ("--seed", "-1", "seed must be in [0, 4294967296), got -1"),
        ("--device", "gpu", "device must be auto or a torch device (cpu, cuda, cuda:N), got 'gpu'"),
        ("--precision", "fp16", "precision must be bf16 or fp32, got 'fp16'"),
        ("--optimizer", "sgd", "optimizer must be adamw or lars, got 'sgd'"),
        ("--eval-every", "-1", "eval_every must be >= 0 (0: at the end), got -1"),
        ("--checkpoint-every", "-5", "checkpoint_every must be >= 0 (0: at the end), got -5"),
        ("--init", "tiny:latest", "init must be NAME or NAME:VERSION, got 'tiny:latest'"),
        ("--projector-dim", "-8", "projector_dim must be >= 1 (0: the method's), got -8"),
        ("--plan", "slow", "unknown plan 'slow': use quick"),
    ],
)
def test_train_refuses_each_setting_out_of_its_domain(tmp_path, option, value, message):
    """Refused before anything is written, with the setting and its value named."""
    run = tmp_path / "run"
    args = ["train", "simclr", "--data", "digits", "--device", "cpu", "--out", str(run)]
    assert_refused(lens(*args, option, value), 2 if option == "--plan" else 1, message)
    assert not run.exists()


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("moco", ["--queue", "1000"], "queue 1000 must be divisible by the batch_size, 256"),
        (
            "moco",
            ["--queue", "80", "--batch-size", "64", "--accum", "2"],
            "queue 80 must be divisible by the batch_size / accum, 32",
        ),
        ("moco", ["--queue", "0"], "queue must be >= 1, got 0"),
        ("byol", ["--momentum", "1"], "momentum must be in [0, 1), got 1.0"),
        ("moco", ["--momentum", "-0.1"], "momentum must be in [0, 1), got -0.1"),
        (
            "byol",
            ["--momentum", "0.99", "--momentum-end", "0.9"],
            "momentum_end must be in [momentum, 1], got 0.9",
        ),
        ("moco", ["--temperature", "0"], "temperature must be finite and > 0, got 0.0"),
        (
            "barlow",
            ["--barlow-lambda", "-0.005"],
            "barlow_lambda must be finite and >= 0, got -0.005",
        ),
        (
            "byol",
            ["--predictor-lr-scale", "0"],
            "predictor_lr_scale must be finite and > 0, got 0.0",
        ),
        (
            "vicreg",
            ["--predictor-lr-scale", "10"],
            "predictor_lr_scale is BYOL's (its predictor's lr × it), got 10.0 for vicreg",
        ),
        (
            "vicreg",
            ["--variance-weight", "-1"],
            "variance_weight must be finite and >= 0, got -1.0",
        ),
        (
            "vicreg",
            ["--invariance-weight", "nan"],
            "invariance_weight must be finite and >= 0, got nan",
        ),
        (
            "vicreg",
            ["--invariance-weight", "0", "--variance-weight", "0", "--covariance-weight", "0"],
            "VICReg needs at least one of its loss weights > 0, got all 0",
        ),
    ],
)
def test_new_methods_refuse_their_bad_settings(tmp_path, method, options, message):
    """MoCo's queue and momentum, BYOL's momentum, Barlow Twins' λ and VICReg's weights:
    refused before anything is written, with the value named."""
    run = tmp_path / "run"
    args = ["train", method, "--data", "digits", "--device", "cpu", "--out", str(run)]
    assert_refused(lens(*args, *options), 1, message)
    assert not run.exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"mask_ratio": 0.0}, "mask_ratio must be in (0, 1), got 0.0"),
        ({"mask_ratio": 1.0}, "mask_ratio must be in (0, 1), got 1.0"),
        ({"warmup": -0.1}, "warmup must be a share of the steps in [0, 1], got -0.1"),
        ({"augment": "strong"}, "augment must be paper or digits, got 'strong'"),
        ({"templates": ()}, "templates must be at least one template, got ()"),
        ({"weight_decay": math.nan}, "weight_decay must be finite (< 0: the method's), got nan"),
        ({"epochs": math.inf}, "epochs must be finite and > 0, got inf"),
        ({"holdout": 0.4}, None),
        ({"lr": 0.0, "steps": 0}, None),  # 0: the method's learning rate, steps from epochs
    ],
)
def test_settings_without_a_flag_are_checked_too(tmp_path, setting, message):
    if message is None:
        config("mae", tmp_path, **setting)
        return
    with pytest.raises(TrainError) as refused:
        config("mae", tmp_path, **setting)
    assert str(refused.value) == message


def test_a_fraction_held_out_must_leave_images_on_both_sides(tmp_path):
    with pytest.raises(
        TrainError, match=r"holdout 0\.0001 of the 1797 images of digits holds out none"
    ):
        Trainer(config("mae", tmp_path / "run", holdout=0.0001))
    assert not (tmp_path / "run").exists()


def test_empty_and_unreadable_image_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    result = lens(
        "train", "simclr", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")
    )
    assert result.returncode == 1 and "no images" in result.stderr
    bad = tmp_path / "bad" / "cats"
    bad.mkdir(parents=True)
    (bad / "broken.jpg").write_bytes(b"not a jpeg")
    result = lens("train", "simclr", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "r"))
    assert result.returncode == 1 and "no readable images (1 unreadable)" in result.stderr


def test_each_method_defaults_to_its_papers_optimizer(tmp_path):
    assert config("simclr", tmp_path, optimizer="", lr=0).defaults().optimizer == "lars"
    assert config("clip", tmp_path, optimizer="", lr=0).defaults().lr == 5e-4
    assert config("mae", tmp_path, optimizer="", weight_decay=-1).defaults().weight_decay == 0.05
    trainer = Trainer(config("simclr", tmp_path / "lars", optimizer="", lr=0, steps=2))
    assert type(trainer.optimizer).__name__ == "Lars"
    result = trainer.run()
    assert result["steps"] == 2 and math.isfinite(result["final_loss"])


def test_byol_predictor_learns_at_its_own_rate(tmp_path):
    """`predictor_lr_scale`: BYOL's predictor, and only it, learns at lr × the scale, and the
    schedule (warm-up here) scales every group alike."""
    trainer = Trainer(config("byol", tmp_path / "run", predictor_lr_scale=10.0, steps=20))
    predictor = {id(p) for p in trainer.method.predictor.parameters()}
    base = {}
    for group in trainer.optimizer.param_groups:
        base |= {id(p): group["initial_lr"] for p in group["params"]}
    assert {base[key] for key in predictor} == {1e-2}
    assert {lr for key, lr in base.items() if key not in predictor} == {1e-3}
    factors = [g["lr"] / g["initial_lr"] for g in trainer.optimizer.param_groups]
    assert 0 < factors[0] < 1 and all(math.isclose(f, factors[0]) for f in factors)
    assert math.isfinite(trainer.run()["final_loss"])


def test_cifar_stem_keeps_32_pixel_images_whole():
    """`resnet18-32` (SimCLR's CIFAR ResNet-18): a 3×3 stride-1 stem and no max-pool."""
    from lens_training.encoders import load_arch, vision_tower

    _, arch = load_arch("resnet18-32")
    trunk = vision_tower(arch).trunk
    assert trunk.conv1.kernel_size == (3, 3) and trunk.conv1.stride == (1, 1)
    assert isinstance(trunk.maxpool, torch.nn.Identity)
    with torch.no_grad():
        assert trunk.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)
    with pytest.raises(ValueError, match="needs a timm ResNet"):
        vision_tower(load_arch("lens-tiny-vit")[1], stem="cifar")


def test_training_speed_benchmark_runs(tmp_path):
    """bench/train_speed.py, which measures the GPU targets, runs end to end (tiny, CPU)."""
    from tests.conftest import ROOT

    out = tmp_path / "speed.json"
    command = [str(LENS.with_name("python")), str(ROOT / "bench" / "train_speed.py"), "--tiny"]
    result = subprocess.run(
        [*command, "--steps", "1", "--warmup", "0", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["simclr", "clip", "mae"]
    assert all(r["images_per_s"] > 0 for r in rows) and rows[2]["unmasked_images_per_s"] > 0


def test_plan_quick_sets_what_is_not_given(tmp_path):
    """`--plan quick` is the method's plan of training/quick.py; options given beside it win."""
    from lens_training.quick import PLANS

    run = tmp_path / "run"
    result = lens(
        *("train", "barlow", "--data", "digits", "--plan", "quick", "--device", "cpu"),
        *("--steps", "2", "--batch-size", "32", "--holdout", "300", "--out", str(run)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = torch.load(run / "checkpoint.pt", weights_only=False)["config"]
    plan = PLANS["barlow"]
    assert (saved["steps"], saved["batch_size"]) == (2, 32)
    for key in ("arch", "lr", "optimizer", "projector_dim"):
        assert saved[key] == plan[key], key
