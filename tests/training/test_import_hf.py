"""`lens import hf` on a local transformers CLIPModel folder, then served."""

from __future__ import annotations

import json
import subprocess

import grpc
import numpy as np
import pytest
import torch
from lens.v1 import common_pb2, inference_pb2, inference_pb2_grpc

from tests.conftest import LENS, ServerProcess, encode, photo


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, tiny_openclip):
    """A tiny random CLIPModel and a CLIPProcessor (image processor and CLIP BPE tokenizer),
    saved as the installed transformers saves them: since transformers 5 the image processor
    goes into `processor_config.json`, and there is no `preprocessor_config.json`."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("hf-clip")
    bpe = tmp_path_factory.mktemp("bpe")  # the tokenizer's sources, kept out of the folder
    reference = tiny_openclip[2]  # open_clip's tokenizer: the same BPE as OpenAI's CLIP
    vocab = {
        k.replace("<start_of_text>", "<|startoftext|>").replace("<end_of_text>", "<|endoftext|>"): v
        for k, v in reference.encoder.items()
    }
    merges = sorted(reference.bpe_ranks, key=reference.bpe_ranks.__getitem__)
    (bpe / "vocab.json").write_text(json.dumps(vocab))
    (bpe / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    tokenizer = CLIPTokenizer(
        vocab_file=str(bpe / "vocab.json"), merges_file=str(bpe / "merges.txt")
    )
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "vocab_size": 49408,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "image_size": 48,
            "patch_size": 16,
        },
        projection_dim=24,
    )
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor(48), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def image_processor(side: int, **options):
    """A CLIPImageProcessor that resizes the short side to `side` and crops a square of it."""
    from transformers import CLIPImageProcessor

    size = {"shortest_edge": side}
    return CLIPImageProcessor(size=size, crop_size={"height": side, "width": side}, **options)


def test_import_hf_and_serve(hf_folder, tmp_path):
    from transformers import AutoTokenizer, CLIPModel

    result = subprocess.run(
        [str(LENS), "import", "hf", str(hf_folder), "--name", "hfclip", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "hfclip" / "1" / "manifest.json").read_text())
    assert manifest["dim"] == 24 and manifest["image"]["rgb"] == "before-resize"
    assert manifest["text"]["clean"] == "none"

    texts = ["a photo of a cat", "Two DOGS, playing!"]
    proc = ServerProcess(tmp_path)
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            response = stub.Embed(
                inference_pb2.EmbedRequest(
                    inputs=[inference_pb2.Input(text=t) for t in texts]
                    + [inference_pb2.Input(image=encode(photo("coffee"), "JPEG"))],
                    model=common_pb2.ModelRef(name="hfclip"),
                ),
                timeout=30,
            )
    finally:
        proc.stop()
    got = np.frombuffer(response.embeddings.data, "<f4").reshape(3, 24)

    model = CLIPModel.from_pretrained(hf_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    ids = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids)
    want = out if isinstance(out, torch.Tensor) else out.pooler_output
    want = torch.nn.functional.normalize(want, dim=-1).numpy()
    assert np.sum(got[:2] * want, axis=1).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_the_folder_is_laid_out_as_transformers_5_saves_it(hf_folder):
    processor = json.loads((hf_folder / "processor_config.json").read_text())
    assert processor["image_processor"]["crop_size"] == {"height": 48, "width": 48}
    assert not (hf_folder / "preprocessor_config.json").exists()


@pytest.fixture(scope="module")
def legacy_folder(tmp_path_factory):
    """An image processor saved alone (as transformers 4 saved a CLIPProcessor's):
    `preprocessor_config.json`, with settings unlike `hf_folder`'s."""
    folder = tmp_path_factory.mktemp("hf-legacy")
    image_processor(40, resample=2).save_pretrained(folder)  # bilinear
    assert [p.name for p in folder.iterdir()] == ["preprocessor_config.json"]
    return folder


@pytest.mark.parametrize("layout", ["hf_folder", "legacy_folder"])
def test_pixels_match_transformers_image_processor(request, layout):
    """The manifest written for a transformers folder reproduces its CLIPImageProcessor,
    whichever file holds the processor's settings."""
    import io

    from PIL import Image
    from transformers import CLIPImageProcessor

    from lens_server.preprocess import ImagePreprocessor
    from lens_training.export.hf import image_spec_from_hf_folder

    folder = request.getfixturevalue(layout)
    processor = CLIPImageProcessor.from_pretrained(folder)
    spec = image_spec_from_hf_folder(folder)
    assert (spec.size, spec.interpolation) == (
        (48, "bicubic") if layout == "hf_folder" else (40, "bilinear")
    )
    ours = ImagePreprocessor(spec)
    for name in ("astronaut", "coffee", "logo", "camera", "page"):
        data = encode(photo(name), "PNG")
        want = processor(images=Image.open(io.BytesIO(data)), return_tensors="np")["pixel_values"]
        diff = np.abs(ours(data) - want[0])
        # transformers' default (torchvision) backend rounds a few pixels the other way:
        # at most one 8-bit level (1/255/std < 0.016), in under 1% of the values.
        assert diff.max() < 0.016, name
        assert np.mean(diff > 1e-5) < 0.01, name


def test_the_nested_settings_win_over_a_stale_preprocessor_config(tmp_path, hf_folder):
    """With both files, transformers reads `processor_config.json`'s image processor; so
    does the import."""
    import shutil

    from transformers import CLIPImageProcessor

    from lens_training.export.hf import image_spec_from_hf_folder

    shutil.copy(hf_folder / "processor_config.json", tmp_path)
    image_processor(32).save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    assert CLIPImageProcessor.from_pretrained(tmp_path).crop_size["height"] == 48
    assert image_spec_from_hf_folder(tmp_path).size == 48


def test_a_folder_without_image_processor_settings_is_refused(tmp_path):
    from lens_training.export.hf import image_spec_from_hf_folder

    (tmp_path / "processor_config.json").write_text('{"processor_class": "CLIPProcessor"}')
    with pytest.raises(ValueError, match=r"neither processor_config\.json with an"):
        image_spec_from_hf_folder(tmp_path)
