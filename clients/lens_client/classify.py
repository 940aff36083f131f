"""Classification calls of both clients: zero-shot, saved and few-shot classifiers (awaited in
`AsyncLensClient`).

lens.classify(["cat.jpg"], labels=["cat", "dog"], templates="openai-imagenet")
lens.create_classifier("pets", labels=["cat", "dog"])
lens.create_classifier("parts", examples={"bolt": [...], "nut": [...]})
lens.classify(images, classifier="pets", top_k=1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lens.v1 import classifiers_pb2, inference_pb2

from lens_client import codec
from lens_client.codec import Call, ImageLike, rpc


def labels_message(
    labels: Sequence[str], templates: str | Sequence[str] | None
) -> classifiers_pb2.Labels:
    """`templates`: a built-in set name, or your own templates with {} or {label}."""
    if isinstance(templates, str):
        return classifiers_pb2.Labels(labels=list(labels), template_set=templates)
    return classifiers_pb2.Labels(labels=list(labels), templates=list(templates or ()))


class ClassifyCalls:
    """Needs `self._inference`, `self._classifiers`, `self.timeout` and `self.model`."""

    _inference: Any
    _classifiers: Any
    timeout: float
    model: str | None

    @rpc
    def classify(
        self,
        images: Sequence[ImageLike],
        *,
        labels: Sequence[str] | None = None,
        templates: str | Sequence[str] | None = None,
        classifier: str | None = None,
        top_k: int = 0,
        multi_label: bool = False,
        threshold: float = 0.5,
        model: str | None = None,
    ) -> Call[list[list[dict[str, Any]]]]:
        """Per image, `[{"label", "probability", "similarity"}]`, most probable first."""
        if (labels is None) == (classifier is None):
            raise ValueError("give labels or a classifier name")
        request = inference_pb2.ClassifyRequest(
            images=[codec.image_bytes(i) for i in images],
            model=codec.parse_model(model or (None if classifier else self.model)),
            top_k=top_k,
            multi_label=multi_label,
            threshold=threshold,
        )
        if classifier is not None:
            request.saved = classifier
        else:
            request.labels.CopyFrom(labels_message(labels or (), templates))
        return Call(self._inference.Classify, request, scores, self.timeout)

    @rpc
    def create_classifier(
        self,
        name: str,
        *,
        labels: Sequence[str] | None = None,
        templates: str | Sequence[str] | None = None,
        examples: Mapping[str, Sequence[ImageLike]] | None = None,
        text_weight: float = 0.0,
        model: str | None = None,
        train: Mapping[str, Sequence[ImageLike]] | None = None,
    ) -> Call[dict[str, Any]]:
        """A saved classifier: zero-shot from `labels`, few-shot from `examples`
        (label → images), optionally mixed with the labels' zero-shot weights, or a linear
        probe fitted to `train` (label → images)."""
        if [labels, examples, train].count(None) != 2:
            raise ValueError("give labels (zero-shot), examples (few-shot) or train (linear)")
        request = classifiers_pb2.CreateClassifierRequest(
            name=name, model=codec.parse_model(model or self.model)
        )
        if train is not None:
            request.linear.CopyFrom(
                classifiers_pb2.Linear(
                    classes=[
                        classifiers_pb2.Examples(
                            label=label, images=[codec.image_bytes(i) for i in images]
                        )
                        for label, images in train.items()
                    ]
                )
            )
        elif labels is not None:
            request.zero_shot.CopyFrom(labels_message(labels, templates))
        else:
            part = labels_message([], templates)
            request.few_shot.CopyFrom(
                classifiers_pb2.FewShot(
                    classes=[
                        classifiers_pb2.Examples(
                            label=label, images=[codec.image_bytes(i) for i in images]
                        )
                        for label, images in (examples or {}).items()
                    ],
                    text_weight=text_weight,
                    template_set=part.template_set,
                    templates=part.templates,
                )
            )
        # No deadline: a few-shot classifier embeds every example first.
        return Call(self._classifiers.CreateClassifier, request, classifier_dict, None)

    @rpc
    def classifiers(self) -> Call[list[dict[str, Any]]]:
        request = classifiers_pb2.ListClassifiersRequest()
        return Call(self._classifiers.ListClassifiers, request, _classifier_list, self.timeout)

    @rpc
    def get_classifier(self, name: str) -> Call[dict[str, Any]]:
        request = classifiers_pb2.ClassifierRequest(name=name)
        return Call(self._classifiers.GetClassifier, request, classifier_dict, self.timeout)

    @rpc
    def delete_classifier(self, name: str) -> Call[None]:
        request = classifiers_pb2.ClassifierRequest(name=name)
        return Call(self._classifiers.DeleteClassifier, request, codec.nothing, self.timeout)


def scores(response: inference_pb2.ClassifyResponse) -> list[list[dict[str, Any]]]:
    """Per image, `[{"label", "probability", "similarity"}]`, most probable first."""
    return [
        [
            {"label": s.label, "probability": s.probability, "similarity": s.similarity}
            for s in result.labels
        ]
        for result in response.results
    ]


def classifier_dict(info: classifiers_pb2.ClassifierInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "model": info.model,
        "kind": info.kind,
        "labels": list(info.labels),
        "templates": info.templates,
        "shots": info.shots,
        "versions": list(info.versions),
        **({"held_out_accuracy": info.held_out_accuracy} if info.kind == "linear" else {}),
    }


def _classifier_list(response: classifiers_pb2.ListClassifiersResponse) -> list[dict[str, Any]]:
    return [classifier_dict(c) for c in response.classifiers]
