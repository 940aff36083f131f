"""`Inference.Classify` and the `lens.v1.Classifiers` service: proto ↔ core, nothing else."""

from __future__ import annotations

import grpc
from lens.v1 import classifiers_pb2, classifiers_pb2_grpc, inference_pb2

from lens_server.core.classify import (
    Classification,
    ClassifierInfo,
    FewShot,
    FewShotClass,
    Labels,
)
from lens_server.services.status import deadline_of, unary


async def classify(
    classification: Classification,
    request: inference_pb2.ClassifyRequest,
    context: grpc.aio.ServicerContext,
) -> inference_pb2.ClassifyResponse:
    which = request.WhichOneof("classifier")
    labels = request.labels
    result = await classification.classify(
        list(request.images),
        labels=Labels(labels.labels, labels.template_set, labels.templates)
        if which == "labels"
        else None,
        saved=request.saved if which == "saved" else "",
        model=request.model.name,
        version=request.model.version,
        top_k=request.top_k,
        multi_label=request.multi_label,
        threshold=request.threshold,
        deadline=deadline_of(context),
    )
    return inference_pb2.ClassifyResponse(
        model=result.model,
        version=result.version,
        classifier=result.classifier,
        results=[
            inference_pb2.Classification(
                labels=[
                    inference_pb2.LabelScore(
                        label=s.label, probability=s.probability, similarity=s.similarity
                    )
                    for s in row
                ]
            )
            for row in result.results
        ],
    )


class ClassifiersServicer(classifiers_pb2_grpc.ClassifiersServicer):
    def __init__(self, classification: Classification) -> None:
        self.classification = classification

    @unary
    async def CreateClassifier(self, request, context):
        which = request.WhichOneof("definition")
        zero, few = request.zero_shot, request.few_shot
        info = await self.classification.create(
            request.name,
            zero_shot=Labels(zero.labels, zero.template_set, zero.templates)
            if which == "zero_shot"
            else None,
            few_shot=FewShot(
                [FewShotClass(c.label, list(c.images)) for c in few.classes],
                few.text_weight,
                few.template_set,
                few.templates,
            )
            if which == "few_shot"
            else None,
            linear=FewShot([FewShotClass(c.label, list(c.images)) for c in request.linear.classes])
            if which == "linear"
            else None,
            model=request.model.name,
            version=request.model.version,
        )
        return _info(info)

    @unary
    async def GetClassifier(self, request, context):
        return _info(self.classification.info(request.name))

    @unary
    async def ListClassifiers(self, request, context):
        return classifiers_pb2.ListClassifiersResponse(
            classifiers=[_info(i) for i in self.classification.all()]
        )

    @unary
    async def DeleteClassifier(self, request, context):
        self.classification.delete(request.name)
        return classifiers_pb2.DeleteClassifierResponse()


def _info(info: ClassifierInfo) -> classifiers_pb2.ClassifierInfo:
    return classifiers_pb2.ClassifierInfo(
        name=info.name,
        model=info.model,
        kind=info.kind,
        labels=info.labels,
        templates=info.templates,
        shots=info.shots,
        versions=info.versions,
        held_out_accuracy=info.held_out_accuracy,
    )
