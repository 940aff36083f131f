"""Classify and saved classifiers over the real server, against open_clip's own pipeline."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from lens.v1 import (
    classifiers_pb2,
    classifiers_pb2_grpc,
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
)
from PIL import Image

from lens_server.templates import OPENAI_IMAGENET
from tests.conftest import ServerProcess, encode, photo

LABELS = ["cat", "astronaut", "cup of coffee", "rocket", "coins"]
PHOTOS = ["chelsea", "astronaut", "coffee", "rocket", "coins", "camera"]


def classify(channel, images, top_k=0, **kwargs) -> inference_pb2.ClassifyResponse:
    return inference_pb2_grpc.InferenceStub(channel).Classify(
        inference_pb2.ClassifyRequest(images=images, top_k=top_k, **kwargs), timeout=60
    )


def classifiers(channel) -> classifiers_pb2_grpc.ClassifiersStub:
    return classifiers_pb2_grpc.ClassifiersStub(channel)


def open_clip_probabilities(tiny_openclip, images, labels, templates) -> np.ndarray:
    from open_clip import build_zero_shot_classifier

    model, preprocess, tokenizer, _ = tiny_openclip
    with torch.no_grad():
        weights = build_zero_shot_classifier(
            model,
            tokenizer,
            classnames=labels,
            templates=[lambda c, t=t: t.format(c) for t in templates],
            num_classes_per_batch=2,
            device="cpu",
            use_tqdm=False,
        )
        x = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images])
        features = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        logits = model.logit_scale.exp() * features @ weights
    return logits.softmax(dim=-1).numpy()


@pytest.mark.parametrize("templates", [("a photo of a {}.",), OPENAI_IMAGENET[:20]])
def test_zero_shot_equals_open_clip(channel, tiny_openclip, templates):
    images = [encode(photo(n), "PNG") for n in PHOTOS]
    response = classify(
        channel,
        images,
        top_k=len(LABELS),
        labels=classifiers_pb2.Labels(labels=LABELS, templates=templates),
    )
    want = open_clip_probabilities(tiny_openclip, images, LABELS, templates)
    for n, result in enumerate(response.results):
        got = {s.label: s.probability for s in result.labels}
        assert result.labels[0].label == LABELS[int(want[n].argmax())]
        np.testing.assert_allclose([got[lab] for lab in LABELS], want[n], atol=1e-4)
        assert [s.probability for s in result.labels] == sorted(
            (s.probability for s in result.labels), reverse=True
        )
    assert (response.model, response.version, response.classifier) == ("tiny", 1, "")


def test_saved_zero_shot_classifier_survives_a_restart(tiny_repo, tmp_path):
    images = [encode(photo(n), "PNG") for n in PHOTOS[:3]]
    labels = classifiers_pb2.Labels(labels=LABELS, template_set="openai-imagenet")
    proc = ServerProcess(tiny_repo)
    try:
        with grpc.insecure_channel(proc.address) as ch:
            info = classifiers(ch).CreateClassifier(
                classifiers_pb2.CreateClassifierRequest(name="things", zero_shot=labels),
                timeout=120,
            )
            assert (info.model, info.kind, info.templates, list(info.versions)) == (
                "tiny",
                "zero-shot",
                80,
                [1],
            )
            inline = classify(ch, images, labels=labels)
            saved = classify(ch, images, saved="things")
            assert saved.classifier == "things"
            for a, b in zip(inline.results, saved.results, strict=True):
                assert [s.label for s in a.labels] == [s.label for s in b.labels]
                np.testing.assert_allclose(
                    [s.probability for s in a.labels], [s.probability for s in b.labels], atol=1e-6
                )
    finally:
        proc.stop()
    assert (tiny_repo / "tiny" / "classifiers" / "things" / "weights-1.npy").is_file()
    proc = ServerProcess(tiny_repo)
    try:
        with grpc.insecure_channel(proc.address) as ch:
            again = classify(ch, images, saved="things")
            assert [s.label for s in again.results[0].labels] == [
                s.label for s in saved.results[0].labels
            ]
            names = [
                c.name
                for c in classifiers(ch)
                .ListClassifiers(classifiers_pb2.ListClassifiersRequest(), timeout=10)
                .classifiers
            ]
            assert "things" in names
            classifiers(ch).DeleteClassifier(
                classifiers_pb2.ClassifierRequest(name="things"), timeout=10
            )
            with pytest.raises(grpc.RpcError) as err:
                classify(ch, images, saved="things")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        proc.stop()


def test_few_shot_classifier(channel):
    shots = {n: [encode(photo(n), "PNG"), encode(photo(n), "JPEG", quality=80)] for n in PHOTOS[:4]}
    request = classifiers_pb2.CreateClassifierRequest(
        name="few",
        few_shot=classifiers_pb2.FewShot(
            classes=[classifiers_pb2.Examples(label=n, images=imgs) for n, imgs in shots.items()]
        ),
    )
    info = classifiers(channel).CreateClassifier(request, timeout=60)
    assert (info.kind, info.shots) == ("few-shot", 2)
    queries = [encode(photo(n), "JPEG", quality=95) for n in shots]
    response = classify(channel, queries, top_k=1, saved="few")
    assert [r.labels[0].label for r in response.results] == list(shots)
    mixed = classifiers_pb2.CreateClassifierRequest(
        name="few-mixed",
        few_shot=classifiers_pb2.FewShot(
            classes=request.few_shot.classes, text_weight=0.5, template_set="simple"
        ),
    )
    assert classifiers(channel).CreateClassifier(mixed, timeout=60).templates == 1


def test_multi_label_threshold(channel):
    images = [encode(photo("chelsea"), "PNG")]
    response = classify(
        channel,
        images,
        top_k=5,
        multi_label=True,
        threshold=0.0,
        labels=classifiers_pb2.Labels(labels=LABELS),
    )
    probabilities = [s.probability for s in response.results[0].labels]
    assert len(probabilities) == 5 and all(0 < p < 1 for p in probabilities)
    assert abs(sum(probabilities) - 1) > 1e-3  # independent, not a softmax
    none = classify(
        channel,
        images,
        top_k=5,
        multi_label=True,
        threshold=1.0,
        labels=classifiers_pb2.Labels(labels=LABELS),
    )
    assert list(none.results[0].labels) == []


def bad_requests():
    image = [encode(photo("coffee"), "PNG")]
    L = classifiers_pb2.Labels
    return [
        (
            "no labels",
            dict(images=image, labels=L()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no labels",
        ),
        (
            "repeated label",
            dict(images=image, labels=L(labels=["a", "b", "a"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "label 2 ('a') repeats label 0",
        ),
        (
            "empty label",
            dict(images=image, labels=L(labels=["a", " "])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "label 1 is empty",
        ),
        (
            "template without {}",
            dict(images=image, labels=L(labels=["a"], templates=["a photo"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "template 0 ('a photo') has no {}",
        ),
        (
            "unknown template set",
            dict(images=image, labels=L(labels=["a"], template_set="x")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown template set",
        ),
        (
            "too many labels",
            dict(images=image, labels=L(labels=[str(i) for i in range(21)])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "21 labels is over the limit of 20",
        ),
        (
            "negative top_k",
            dict(images=image, top_k=-1, labels=L(labels=["a"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k must be >= 0 (0: the default of 5), got -1",
        ),
        (
            "top_k above labels",
            dict(images=image, top_k=3, labels=L(labels=["a", "b"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k 3 is above the number of labels (2)",
        ),
        (
            "unknown classifier",
            dict(images=image, saved="nope"),
            grpc.StatusCode.NOT_FOUND,
            "classifier 'nope' not found",
        ),
        (
            "no images",
            dict(labels=L(labels=["a"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "images is empty",
        ),
        (
            "bad image",
            dict(images=[b"junk"], labels=L(labels=["a"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 0: image could not be decoded",
        ),
    ]


def test_bad_classify_requests(tiny_repo):
    proc = ServerProcess(tiny_repo, "--max-labels", "20")
    try:
        with grpc.insecure_channel(proc.address) as ch:
            for name, kwargs, code, message in bad_requests():
                with pytest.raises(grpc.RpcError) as err:
                    inference_pb2_grpc.InferenceStub(ch).Classify(
                        inference_pb2.ClassifyRequest(**kwargs), timeout=30
                    )
                assert err.value.code() == code, name
                assert message in err.value.details(), (name, err.value.details())
            empty_class = classifiers_pb2.CreateClassifierRequest(
                name="bad",
                few_shot=classifiers_pb2.FewShot(
                    classes=[
                        classifiers_pb2.Examples(label="a", images=[encode(photo("coins"), "PNG")]),
                        classifiers_pb2.Examples(label="b"),
                    ]
                ),
            )
            with pytest.raises(grpc.RpcError) as err:
                classifiers(ch).CreateClassifier(empty_class, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "label 'b' has no example images" in err.value.details()
            assert proc.alive()
    finally:
        proc.stop()


def test_a_classifier_of_another_model_and_image_only_models(channel, tiny_repo):
    classifiers(channel).CreateClassifier(
        classifiers_pb2.CreateClassifierRequest(
            name="for-tiny", zero_shot=classifiers_pb2.Labels(labels=["a", "b"])
        ),
        timeout=30,
    )
    with pytest.raises(grpc.RpcError) as err:
        classify(
            channel,
            [encode(photo("coins"), "PNG")],
            saved="for-tiny",
            model=common_pb2.ModelRef(name="other"),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "made for model 'tiny'" in err.value.details()
