"""`Inference.Classify` and the `lens.v1.Classifiers` service."""

from __future__ import annotations

from collections import OrderedDict

import grpc
import numpy as np
from lens.v1 import classifiers_pb2, classifiers_pb2_grpc, inference_pb2

from lens_server.classifiers import (
    ClassifierSpec,
    ClassifierStore,
    check_labels,
    compute_weights,
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
from lens_server.services.status import deadline_of, unary


class Classification:
    """Turns a ClassifyRequest into scores: the weights (inline, or saved and computed once per
    model version), the images through the model, the top labels."""

    # Inline label sets whose weights are kept, most recently used first.
    INLINE_CACHE = 32

    def __init__(self, registry: Registry, store: ClassifierStore, config: ServerConfig) -> None:
        self.registry = registry
        self.store = store
        self.config = config
        self._inline: OrderedDict[tuple, np.ndarray] = OrderedDict()

    async def classify(
        self, request: inference_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ClassifyResponse:
        limit = self.config.limits.max_inputs_per_request
        if not request.images:
            raise InvalidInput("images is empty: send at least one image")
        if len(request.images) > limit:
            raise InvalidInput(f"{len(request.images)} images is over the limit of {limit}")
        if request.top_k < 0:
            raise InvalidInput(f"top_k must be >= 1, got {request.top_k}")
        which = request.WhichOneof("classifier")
        if which is None:
            raise InvalidInput("give labels or the name of a saved classifier")
        if which == "saved":
            spec = self.store.get(request.saved)
            if request.model.name and request.model.name != spec.model:
                raise FailedPrecondition(
                    f"classifier {spec.name!r} was made for model {spec.model!r}, not "
                    f"{request.model.name!r}"
                )
            labels = spec.labels
            model = self.registry.resolve(spec.model, request.model.version)
        else:
            labels = check_labels(request.labels.labels, self.config.limits.max_labels)
            templates = templates_of(request.labels.template_set, request.labels.templates)
            model = self.registry.resolve(request.model.name, request.model.version)
        top_k = request.top_k or min(5, len(labels))
        if top_k > len(labels):
            raise InvalidInput(f"top_k {top_k} is above the number of labels ({len(labels)})")
        with model.lease():  # the version stays loaded until this request is done
            if which == "saved":
                weights = await saved_weights(self.store, spec, model)
            else:
                weights = await self.inline_weights(model, labels, templates)
            inputs: list[Input] = list(request.images)
            images = await model.embed(inputs, deadline_of(context))
        ranked = scores(
            images, weights, scale_of(model), top_k, request.multi_label, request.threshold
        )
        return inference_pb2.ClassifyResponse(
            model=model.name,
            version=model.version,
            classifier=request.saved if which == "saved" else "",
            results=[
                inference_pb2.Classification(
                    labels=[
                        inference_pb2.LabelScore(label=labels[c], probability=p, similarity=s)
                        for c, p, s in row
                    ]
                )
                for row in ranked
            ],
        )

    async def inline_weights(
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


class ClassifiersServicer(classifiers_pb2_grpc.ClassifiersServicer):
    def __init__(self, classification: Classification) -> None:
        self.classification = classification
        self.store = classification.store

    @unary
    async def CreateClassifier(self, request, context):
        limit = self.classification.config.limits.max_labels
        model = self.classification.registry.resolve(request.model.name, request.model.version)
        which = request.WhichOneof("definition")
        examples: list[list[bytes]] = []
        if which == "zero_shot":
            spec = ClassifierSpec(
                request.name,
                model.name,
                "zero-shot",
                check_labels(request.zero_shot.labels, limit),
                templates_of(request.zero_shot.template_set, request.zero_shot.templates),
            )
        elif which == "few_shot":
            few = request.few_shot
            labels = check_labels([c.label for c in few.classes], limit)
            examples = [list(c.images) for c in few.classes]
            for label, images in zip(labels, examples, strict=True):
                if not images:
                    raise InvalidInput(f"label {label!r} has no example images")
            if not 0 <= few.text_weight <= 1:
                raise InvalidInput(f"text_weight must be in [0, 1], got {few.text_weight}")
            templates = templates_of(few.template_set, few.templates) if few.text_weight else ()
            spec = ClassifierSpec(
                request.name,
                model.name,
                "few-shot",
                labels,
                templates,
                few.text_weight,
                min(len(e) for e in examples),
            )
        else:
            raise InvalidInput("give zero_shot labels or few_shot examples")
        if spec.name in self.store.names():
            raise AlreadyExists(f"classifier {spec.name!r} already exists")
        with model.lease():
            weights = await compute_weights(spec, model, examples)
        self.store.create(spec, examples)
        self.store.save_weights(spec, model.version, weights)
        return self._info(spec)

    @unary
    async def GetClassifier(self, request, context):
        return self._info(self.store.get(request.name))

    @unary
    async def ListClassifiers(self, request, context):
        return classifiers_pb2.ListClassifiersResponse(
            classifiers=[self._info(self.store.get(n)) for n in self.store.names()]
        )

    @unary
    async def DeleteClassifier(self, request, context):
        self.store.delete(request.name)
        return classifiers_pb2.DeleteClassifierResponse()

    def _info(self, spec: ClassifierSpec) -> classifiers_pb2.ClassifierInfo:
        return classifiers_pb2.ClassifierInfo(
            name=spec.name,
            model=spec.model,
            kind=spec.kind,
            labels=list(spec.labels),
            templates=len(spec.templates),
            shots=spec.shots,
            versions=self.store.versions(spec),
        )
