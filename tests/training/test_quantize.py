"""int8 versions: written by `lens import --quantize int8`, served by a real server close to
the fp32 version, refused at import and at deploy below their gate, bad input refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lens_client import LensClient
from lens_server.vectors import cosine_rows
from tests.clients.test_cli import lens
from tests.conftest import TINY_ARCH, ServerProcess, encode, photo

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")
TEXTS = ["a photo of a cat", "an astronaut", "a cup of coffee", "a rocket", "two dogs", ""]


@pytest.fixture(scope="module")
def int8_repo(tiny_repo: Path, tiny_openclip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of `tiny_repo` whose version 2 is `tiny` version 1's checkpoint in int8."""
    from lens_server.repository import Repository
    from lens_training.export.openclip import import_openclip
    from lens_training.export.quantize import Quantize

    root = Path(shutil.copytree(tiny_repo, tmp_path_factory.mktemp("int8") / "repo"))
    version, _ = import_openclip(
        Repository(root),
        str(TINY_ARCH),
        "tiny",
        pretrained=str(tiny_openclip[3]),
        quantize=Quantize("int8"),
    )
    assert version == 2
    return root


@pytest.fixture(scope="module")
def int8_server(int8_repo: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(int8_repo, "--max-batch-size", "8")
    yield proc
    proc.stop()


def manifest(repo: Path, version: int) -> dict:
    return json.loads((repo / "tiny" / str(version) / "manifest.json").read_text())


def test_the_int8_version_records_its_quantization_parity_and_gate(int8_repo):
    recorded = manifest(int8_repo, 2)
    quantization = recorded["quantization"]
    assert quantization["scheme"] == "int8"
    assert quantization["gate"] == 0.99  # trained (checkpoint) weights
    assert quantization["calibration"]["set"] == "samples"
    assert quantization["calibration"]["images"] > 8 and quantization["calibration"]["texts"] > 9
    for tower in ("image", "text"):
        figures = recorded["parity"][tower]
        assert figures["reference"] == "fp32" and figures["threshold"] == 0.99
        assert 0.99 <= figures["min_cosine"] <= figures["mean_cosine"] <= 1.0
        assert recorded["parity"][f"{tower}.fp32"]["min_cosine"] >= 0.99999
        assert quantization["fp32_nodes"][tower]  # the final projection stays fp32
        assert recorded[tower]["file"] == f"{tower}.int8.onnx" and recorded[tower]["program"] == ""
        assert f"{tower}.int8.onnx" in recorded["files"]
        assert not (int8_repo / "tiny" / "2" / f"{tower}.onnx").exists()
    assert manifest(int8_repo, 1)["quantization"] == {}


def test_the_int8_version_serves_embeddings_close_to_fp32(int8_server, server):
    images = [encode(photo(name)) for name in PHOTOS]
    with LensClient(int8_server.address) as int8, LensClient(server.address) as fp32:
        assert int8.get_model("tiny")["serving_version"] == 2
        assert fp32.get_model("tiny")["serving_version"] == 1
        for embed, inputs in (("embed_images", images), ("embed_texts", TEXTS)):
            quantized = np.asarray(getattr(int8, embed)(inputs))
            reference = np.asarray(getattr(fp32, embed)(inputs))
            assert quantized.shape == reference.shape == (len(inputs), 32)
            assert cosine_rows(quantized, reference).min() >= 0.99, embed
            assert not np.allclose(quantized, reference, atol=1e-6)  # it is not the fp32 graph


def test_a_gate_above_what_int8_reaches_is_refused_at_import(int8_repo, tiny_openclip):
    from lens_server.repository import Repository
    from lens_training.export import ParityError
    from lens_training.export.openclip import import_openclip
    from lens_training.export.quantize import Quantize

    repo = Repository(int8_repo)
    with pytest.raises(ParityError, match=r"tower int8: cosine similarity 0\.\d+ .* gate 0\.99999"):
        import_openclip(
            repo,
            str(TINY_ARCH),
            "tiny",
            pretrained=str(tiny_openclip[3]),
            quantize=Quantize("int8", gate=0.99999),
        )
    assert repo.versions("tiny") == [1, 2]
    assert not any(p.name.startswith(".staging") for p in (int8_repo / "tiny").iterdir())


def test_an_int8_version_below_its_gate_is_refused_at_deploy(int8_server, int8_repo):
    deployed = lens("deploy", "tiny", "2", "--server", int8_server.address)
    assert deployed.returncode == 0, deployed.stderr
    # version 3: version 2's files, its manifest recording a gate above the parity it reached
    shutil.copytree(int8_repo / "tiny" / "2", int8_repo / "tiny" / "3")
    strict = manifest(int8_repo, 2)
    strict["version"] = 3
    reached = strict["parity"]["text"]["min_cosine"]
    strict["parity"]["text"]["threshold"] = strict["quantization"]["gate"] = 0.99999
    (int8_repo / "tiny" / "3" / "manifest.json").write_text(json.dumps(strict))
    refused = lens("deploy", "tiny", "3", "--server", int8_server.address)
    assert refused.returncode != 0
    message = refused.stderr + refused.stdout
    assert "failed parity" in message and f"text min cosine {reached:.6f} < 0.99999" in message
    with LensClient(int8_server.address) as client:
        assert client.get_model("tiny")["serving_version"] == 2
        assert np.asarray(client.embed_texts(["still serving"])).shape == (1, 32)


@pytest.fixture(scope="module")
def calibration_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calibration")
    folders = {name: root / name for name in ("empty", "texts-only", "garbage")}
    for folder in folders.values():
        folder.mkdir()
    (folders["texts-only"] / "captions.txt").write_text("a cat\na dog\n")
    (folders["garbage"] / "photo.png").write_bytes(encode(photo("coffee")))
    (folders["garbage"] / "notes.bin").write_bytes(b"\x00\x01 not an image")
    folders["file"] = root / "texts-only" / "captions.txt"
    return folders


@pytest.mark.parametrize(
    "options, message",
    [
        (["--quantize", "int4"], "unknown quantization scheme 'int4': use int8"),
        (["--quantize", "int8", "--calibration", "{empty}"], "is empty: no images"),
        (["--quantize", "int8", "--calibration", "{texts-only}"], "has no images for the image"),
        (["--quantize", "int8", "--calibration", "{garbage}"], "notes.bin is neither an image"),
        (["--quantize", "int8", "--calibration", "{file}"], "captions.txt' is not a folder"),
        (["--quantize", "int8", "--parity-gate", "1.5"], "gate must be in (0, 1], got 1.5"),
        (["--calibration", "{garbage}"], "--calibration and --parity-gate need --quantize"),
    ],
)
def test_bad_quantization_input_is_refused_naming_it(
    tmp_path, calibration_folders, options, message
):
    given = [o.format(**{k: str(v) for k, v in calibration_folders.items()}) for o in options]
    result = lens(
        "import", "openclip", "--arch", str(TINY_ARCH), "--name", "bad", "--repo", str(tmp_path),
        *given,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "bad").exists()
