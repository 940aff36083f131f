"""Zero-shot and few-shot classification, and the saved classifiers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lens_server.classifiers import (
    ClassifierSpec,
    ClassifierStore,
    check_image,
    check_labels,
    compute_weights,
    linear_fit,
    saved_weights,
    scale_of,
    scores,
    templates_of,
    zero_shot_weights,
)
from lens_server.config import ServerConfig
from lens_server.errors import AlreadyExists, FailedPrecondition, InvalidInput
from lens_server.model import Input, LoadedVersion
from lens_server.registry import Registry


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float
    similarity: float


@dataclass(frozen=True)
class Classified:
    """The top labels of each image, best first, and what scored them."""

    model: str
    version: int
    classifier: str  # the saved classifier's name; empty for inline labels
    results: list[list[LabelScore]]


@dataclass(frozen=True)
class Labels:
    """Inline zero-shot labels and the prompt templates to embed them with (a named set, or
    templates with `{}` where the label goes; neither: the model's default set)."""

    labels: Sequence[str]
    template_set: str = ""
    templates: Sequence[str] = ()


@dataclass(frozen=True)
class FewShotClass:
    label: str
    images: Sequence[bytes]


@dataclass(frozen=True)
class FewShot:
    classes: Sequence[FewShotClass]
    # How much of each class's weight comes from its label's text (0: images only).
    text_weight: float = 0.0
    template_set: str = ""
    templates: Sequence[str] = ()


@dataclass(frozen=True)
class ClassifierInfo:
    name: str
    model: str
    kind: str
    labels: list[str]
    templates: int
    shots: int
    versions: list[int] = field(default_factory=list)
    held_out_accuracy: float = -1.0  # linear: of its fit on a stratified 80/20 split


class Classification:
    """Scores images against labels: the weights (inline, or saved and computed once per
    model version), the images through the model, the top labels."""

    # Inline label sets whose weights are kept, most recently used first.
    INLINE_CACHE = 32

    def __init__(self, registry: Registry, store: ClassifierStore, config: ServerConfig) -> None:
        self.registry = registry
        self.store = store
        self.config = config
        self._inline: OrderedDict[tuple, np.ndarray] = OrderedDict()

    async def classify(
        self,
        images: Sequence[bytes],
        labels: Labels | None = None,
        saved: str = "",
        model: str = "",
        version: int = 0,
        top_k: int = 0,
        multi_label: bool = False,
        threshold: float = 0.0,
        deadline: float | None = None,
    ) -> Classified:
        """The `top_k` labels of each image (0: up to 5), from inline `labels` or the saved
        classifier `saved`; `multi_label` scores each label alone (sigmoid), keeping those
        at or above `threshold`."""
        limit = self.config.limits.max_inputs_per_request
        if not images:
            raise InvalidInput("images is empty: send at least one image")
        if len(images) > limit:
            raise InvalidInput(f"{len(images)} images is over the limit of {limit}")
        if top_k < 0:
            raise InvalidInput(f"top_k must be >= 0 (0: the default of 5), got {top_k}")
        if (labels is None) == (not saved):
            raise InvalidInput("give labels or the name of a saved classifier (not both)")
        if saved:
            spec = self.store.get(saved)
            if model and model != spec.model:
                raise FailedPrecondition(
                    f"classifier {spec.name!r} was made for model {spec.model!r}, not {model!r}"
                )
            names = spec.labels
            loaded = self.registry.resolve(spec.model, version)
        else:
            assert labels is not None
            names = check_labels(labels.labels, self.config.limits.max_labels)
            templates = templates_of(labels.template_set, labels.templates)
            loaded = self.registry.resolve(model, version)
        top_k = top_k or min(5, len(names))
        if top_k > len(names):
            raise InvalidInput(f"top_k {top_k} is above the number of labels ({len(names)})")
        with loaded.lease():  # the version stays loaded until this request is done
            if saved:
                weights = await saved_weights(self.store, spec, loaded)
            else:
                weights = await self._inline_weights(loaded, names, templates)
            inputs: list[Input] = list(images)
            vectors = await loaded.embed(inputs, deadline)
        linear = bool(saved) and spec.kind == "linear"
        ranked = scores(vectors, weights, scale_of(loaded), top_k, multi_label, threshold, linear)
        return Classified(
            loaded.name,
            loaded.version,
            saved,
            [[LabelScore(names[c], p, s) for c, p, s in row] for row in ranked],
        )

    async def _inline_weights(
        self, model: LoadedVersion, labels: tuple[str, ...], templates: tuple[str, ...]
    ) -> np.ndarray:
        """Zero-shot weights of inline labels, remembered for the next request like it."""
        key = (model.name, model.version, labels, templates)
        if key in self._inline:
            self._inline.move_to_end(key)
            return self._inline[key]
        weights = await zero_shot_weights(model, labels, templates)
        self._inline[key] = weights
        while len(self._inline) > self.INLINE_CACHE:
            self._inline.popitem(last=False)
        return weights

    # -- saved classifiers -------------------------------------------------------------------

    async def create(
        self,
        name: str,
        zero_shot: Labels | None = None,
        few_shot: FewShot | None = None,
        model: str = "",
        version: int = 0,
        linear: FewShot | None = None,
    ) -> ClassifierInfo:
        """Saves a classifier (from labels, example images per label, or labelled images to
        fit a linear probe to) and its weights for the model version it was made with."""
        limit = self.config.limits.max_labels
        if not name:
            raise InvalidInput("name is empty")
        loaded = self.registry.resolve(model, version)
        examples: list[list[bytes]] = []
        if [zero_shot, few_shot, linear].count(None) != 2:
            raise InvalidInput(
                "give zero_shot labels, few_shot examples or linear training images (one of them)"
            )
        if linear is not None:
            return await self._create_linear(name, loaded, linear)
        if zero_shot is not None:
            spec = ClassifierSpec(
                name,
                loaded.name,
                "zero-shot",
                check_labels(zero_shot.labels, limit),
                templates_of(zero_shot.template_set, zero_shot.templates),
            )
        else:
            assert few_shot is not None
            labels = check_labels([c.label for c in few_shot.classes], limit)
            examples = [list(c.images) for c in few_shot.classes]
            for label, shots in zip(labels, examples, strict=True):
                if not shots:
                    raise InvalidInput(f"label {label!r} has no example images")
            if not 0 <= few_shot.text_weight <= 1:
                raise InvalidInput(f"text_weight must be in [0, 1], got {few_shot.text_weight}")
            templates = (
                templates_of(few_shot.template_set, few_shot.templates)
                if few_shot.text_weight
                else ()
            )
            spec = ClassifierSpec(
                name,
                loaded.name,
                "few-shot",
                labels,
                templates,
                few_shot.text_weight,
                min(len(e) for e in examples),
            )
        if spec.name in self.store.names():
            raise AlreadyExists(f"classifier {spec.name!r} already exists")
        with loaded.lease():
            weights = await compute_weights(spec, loaded, examples)
        self.store.create(spec, examples)
        self.store.save_weights(spec, loaded.version, weights)
        return self.info(spec.name)

    async def _create_linear(
        self, name: str, loaded: LoadedVersion, linear: FewShot
    ) -> ClassifierInfo:
        labels = check_labels([c.label for c in linear.classes], self.config.limits.max_labels)
        if len(labels) < 2:
            raise InvalidInput(
                f"a linear classifier needs two labels or more, got {len(labels)} ({labels[0]!r})"
            )
        examples = [list(c.images) for c in linear.classes]
        for label, images in zip(labels, examples, strict=True):
            if not images:
                raise InvalidInput(f"label {label!r} has no training images")
        for label, images in zip(labels, examples, strict=True):
            for j, data in enumerate(images):
                check_image(data, f"training image {j} of label {label!r}")
        if name in self.store.names():
            raise AlreadyExists(f"classifier {name!r} already exists")
        with loaded.lease():
            weights, held_out = await linear_fit(loaded, examples, labels)
        spec = ClassifierSpec(
            name,
            loaded.name,
            "linear",
            labels,
            shots=min(len(e) for e in examples),
            held_out_accuracy=held_out,
        )
        self.store.create(spec, examples)
        self.store.save_weights(spec, loaded.version, weights)
        return self.info(spec.name)

    def info(self, name: str) -> ClassifierInfo:
        spec = self.store.get(name)  # NotFound lists the classifiers
        return ClassifierInfo(
            spec.name,
            spec.model,
            spec.kind,
            list(spec.labels),
            len(spec.templates),
            spec.shots,
            self.store.versions(spec),
            spec.held_out_accuracy,
        )

    def all(self) -> list[ClassifierInfo]:
        return [self.info(n) for n in self.store.names()]

    def delete(self, name: str) -> None:
        self.store.delete(name)
