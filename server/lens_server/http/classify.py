"""Classification: `POST /v1/classify` (as `lens.v1.Inference/Classify`, with multipart
uploads) and the saved classifiers of `lens.v1.Classifiers`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, Field

from lens_server.core import Core
from lens_server.core.classify import ClassifierInfo, FewShot, FewShotClass, Labels
from lens_server.http.codec import model_ref
from lens_server.http.errors import RESPONSES
from lens_server.http.fetch import Fetcher
from lens_server.http.state import core_of, fetcher_of
from lens_server.http.uploads import openapi_body, parse

router = APIRouter(tags=["Classify"], responses=RESPONSES)
CoreDep = Annotated[Core, Depends(core_of)]
FetcherDep = Annotated[Fetcher, Depends(fetcher_of)]

_MODEL = "NAME or NAME:VERSION; none: the default model (or the saved classifier's)."
_TEMPLATES = "Prompt templates with {} where the label goes; none: `template_set`."
_TEMPLATE_SET = "A named template set; neither this nor `templates`: the model's default."


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(
        default_factory=list, description="Images as base64 or data:image/... URIs."
    )
    labels: list[str] = Field(default_factory=list, description="Inline zero-shot labels.")
    templates: list[str] = Field(default_factory=list, description=_TEMPLATES)
    template_set: str = Field(default="", description=_TEMPLATE_SET)
    classifier: str = Field(default="", description="A saved classifier, instead of labels.")
    model: str | None = Field(default=None, description=_MODEL)
    top_k: int = Field(default=0, description="Labels per image; 0: up to 5.")
    multi_label: bool = Field(
        default=False, description="Score each label alone (sigmoid), not a softmax over all."
    )
    threshold: float = Field(
        default=0.0, description="With multi_label: keep labels at or above this probability."
    )


class LabelScoreOut(BaseModel):
    label: str
    probability: float
    similarity: float


class ClassificationOut(BaseModel):
    labels: list[LabelScoreOut]


class ClassifyResponse(BaseModel):
    model: str
    version: int
    classifier: str
    # One per image, in input order (uploaded files first, then `images`); labels best first.
    results: list[ClassificationOut]


class ZeroShotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[str]
    templates: list[str] = Field(default_factory=list, description=_TEMPLATES)
    template_set: str = Field(default="", description=_TEMPLATE_SET)


class ExamplesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    images: list[str] = Field(description="Example images: base64 or data:image/... URIs.")


class FewShotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classes: list[ExamplesIn]
    text_weight: float = Field(
        default=0.0, description="Share of each class's weight from its label's text (0..1)."
    )
    templates: list[str] = Field(default_factory=list, description=_TEMPLATES)
    template_set: str = Field(default="", description=_TEMPLATE_SET)


class LinearIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classes: list[ExamplesIn] = Field(description="Training images per label (two or more).")


class CreateClassifierRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model: str | None = Field(default=None, description=_MODEL)
    zero_shot: ZeroShotIn | None = Field(default=None, description="From labels (or few_shot).")
    few_shot: FewShotIn | None = Field(
        default=None, description="From example images per label (or zero_shot)."
    )
    linear: LinearIn | None = Field(
        default=None, description="A linear probe fitted to labelled images (or the others)."
    )


class ClassifierOut(BaseModel):
    name: str
    model: str
    kind: str
    labels: list[str]
    templates: int
    shots: int
    # The model versions its weights are saved for.
    versions: list[int]
    # Linear: accuracy on its held-out 20% (-1: too few images to hold any out).
    held_out_accuracy: float = -1.0


class ClassifierList(BaseModel):
    classifiers: list[ClassifierOut]


class Deleted(BaseModel):
    name: str
    deleted: bool = True


FORM = {
    "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "labels": {"type": "array", "items": {"type": "string"}},
    "templates": {"type": "array", "items": {"type": "string"}},
    "template_set": {"type": "string"},
    "classifier": {"type": "string"},
    "model": {"type": "string"},
    "top_k": {"type": "integer"},
    "multi_label": {"type": "boolean"},
    "threshold": {"type": "number"},
}


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    openapi_extra=openapi_body(ClassifyRequest, FORM),
)
async def classify(request: Request, core: CoreDep, fetcher: FetcherDep) -> ClassifyResponse:
    """The top labels of each image, from inline labels or a saved classifier."""
    body, files = await parse(request, ClassifyRequest, lists=("images", "labels", "templates"))
    images = list(files)
    for i, text in enumerate(body.images):
        images.append(await fetcher.image(text, f"images[{i}]"))
    inline = body.labels or body.templates or body.template_set or not body.classifier
    name, version = model_ref(body.model)
    result = await core.classification.classify(
        images,
        # Labels beside a classifier are passed on, so that the core refuses the pair.
        labels=Labels(body.labels, body.template_set, body.templates) if inline else None,
        saved=body.classifier,
        model=name,
        version=version,
        top_k=body.top_k,
        multi_label=body.multi_label,
        threshold=body.threshold,
    )
    return ClassifyResponse(
        model=result.model,
        version=result.version,
        classifier=result.classifier,
        results=[
            ClassificationOut(
                labels=[
                    LabelScoreOut(label=s.label, probability=s.probability, similarity=s.similarity)
                    for s in row
                ]
            )
            for row in result.results
        ],
    )


@router.get("/v1/classifiers", response_model=ClassifierList)
async def list_classifiers(core: CoreDep) -> ClassifierList:
    return ClassifierList(classifiers=[_info(i) for i in core.classification.all()])


@router.post("/v1/classifiers", response_model=ClassifierOut, status_code=status.HTTP_201_CREATED)
async def create_classifier(
    body: CreateClassifierRequest, core: CoreDep, fetcher: FetcherDep
) -> ClassifierOut:
    """Saves a classifier, and its weights for the model version it is made with."""
    zero, few, linear = body.zero_shot, body.few_shot, body.linear
    classes: list[FewShotClass] = []
    trained: list[FewShotClass] = []
    for part, given, out in (("few_shot", few, classes), ("linear", linear, trained)):
        for i, examples in enumerate(given.classes if given else ()):
            where = f"{part}.classes[{i}].images"
            images = [
                await fetcher.image(t, f"{where}[{j}]") for j, t in enumerate(examples.images)
            ]
            out.append(FewShotClass(examples.label, images))
    name, version = model_ref(body.model)
    info = await core.classification.create(
        body.name,
        zero_shot=Labels(zero.labels, zero.template_set, zero.templates) if zero else None,
        few_shot=FewShot(classes, few.text_weight, few.template_set, few.templates)
        if few
        else None,
        linear=FewShot(trained) if linear else None,
        model=name,
        version=version,
    )
    return _info(info)


@router.get("/v1/classifiers/{name}", response_model=ClassifierOut)
async def get_classifier(name: str, core: CoreDep) -> ClassifierOut:
    return _info(core.classification.info(name))


@router.delete("/v1/classifiers/{name}", response_model=Deleted)
async def delete_classifier(name: str, core: CoreDep) -> Deleted:
    core.classification.delete(name)
    return Deleted(name=name)


def _info(info: ClassifierInfo) -> ClassifierOut:
    return ClassifierOut(
        name=info.name,
        model=info.model,
        kind=info.kind,
        labels=info.labels,
        templates=info.templates,
        shots=info.shots,
        versions=info.versions,
        held_out_accuracy=info.held_out_accuracy,
    )
