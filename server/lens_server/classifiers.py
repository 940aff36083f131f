"""Zero-shot and few-shot classifiers: their weights, and where saved ones are kept.

Zero-shot weights are open_clip's `build_zero_shot_classifier`: per label, the mean of its
L2-normalised template embeddings, normalised again. Few-shot weights are class prototypes:
the normalised mean embedding of each label's example images, optionally mixed with the
zero-shot weight. Logits are the model's logit scale (CLIP's learned temperature, from the
manifest; 1/0.07 for models without one) times cosine similarity.

A saved classifier lives in the model repository, `<repo>/<model>/classifiers/<name>/`:
`classifier.json` (its definition), `examples/` (few-shot images, kept so the weights can be
recomputed), and `weights-<version>.npy` per model version, computed on first use.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lens_server.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound, available
from lens_server.model import LoadedVersion
from lens_server.repository.store import check_name
from lens_server.templates import SETS
from lens_server.vectors import l2_normalize

DEFAULT_SCALE = 1 / 0.07
# Texts embedded per call while building weights (keeps within the batcher's queue).
CHUNK = 512


@dataclass(frozen=True)
class ClassifierSpec:
    name: str
    model: str
    kind: str  # "zero-shot" or "few-shot"
    labels: tuple[str, ...]
    templates: tuple[str, ...] = ()
    text_weight: float = 0.0
    shots: int = 0


def templates_of(template_set: str, templates: Sequence[str]) -> tuple[str, ...]:
    """Inline templates (checked), else the named set (default `simple`)."""
    if templates:
        for i, template in enumerate(templates):
            if "{}" not in template and "{label}" not in template:
                raise InvalidInput(f"template {i} ({template!r}) has no {{}} or {{label}}")
        return tuple(templates)
    name = template_set or "simple"
    if name not in SETS:
        raise InvalidInput(
            f"unknown template set {name!r}. {available('template sets', list(SETS))}"
        )
    return SETS[name]


def check_labels(labels: Sequence[str], limit: int) -> tuple[str, ...]:
    if not labels:
        raise InvalidInput("no labels: give at least one")
    if len(labels) > limit:
        raise InvalidInput(f"{len(labels)} labels is over the limit of {limit}")
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if not label.strip():
            raise InvalidInput(f"label {i} is empty")
        if label in seen:
            raise InvalidInput(f"label {i} ({label!r}) repeats label {seen[label]}")
        seen[label] = i
    return tuple(labels)


def fill(template: str, label: str) -> str:
    return template.replace("{label}", label).replace("{}", label)


def scale_of(model: LoadedVersion) -> float:
    return model.manifest.logit_scale or DEFAULT_SCALE


async def zero_shot_weights(
    model: LoadedVersion, labels: Sequence[str], templates: Sequence[str]
) -> np.ndarray:
    """(C, D) zero-shot weights, the label texts batched through the model's text tower."""
    if model.text is None:
        raise FailedPrecondition(
            f"model {model.name} has no text tower: zero-shot labels need one; create a "
            "few-shot classifier from example images instead"
        )
    texts = [fill(t, label) for label in labels for t in templates]
    parts = [await model.embed(texts[i : i + CHUNK]) for i in range(0, len(texts), CHUNK)]
    per_template = np.concatenate(parts).reshape(len(labels), len(templates), -1)
    return l2_normalize(per_template.mean(axis=1))  # (C, D)


async def few_shot_weights(
    model: LoadedVersion,
    examples: Sequence[Sequence[bytes]],
    labels: Sequence[str],
    templates: Sequence[str],
    text_weight: float,
) -> np.ndarray:
    """(C, D) class prototypes, mixed with zero-shot weights when `text_weight` > 0."""
    if model.image is None:
        raise FailedPrecondition(f"model {model.name} has no image tower")
    prototypes = []
    for label, images in zip(labels, examples, strict=True):
        if not images:
            raise InvalidInput(f"label {label!r} has no example images")
        vectors = np.concatenate(
            [await model.embed(list(images[i : i + CHUNK])) for i in range(0, len(images), CHUNK)]
        )
        prototypes.append(vectors.mean(axis=0))
    weights = l2_normalize(np.stack(prototypes))
    if text_weight > 0:
        text = await zero_shot_weights(model, labels, templates)
        weights = l2_normalize((1 - text_weight) * weights + text_weight * text)
    return weights


def scores(
    images: np.ndarray,
    weights: np.ndarray,
    scale: float,
    top_k: int,
    multi_label: bool,
    threshold: float,
) -> list[list[tuple[int, float, float]]]:
    """Per image, (label index, probability, similarity) of the top_k labels."""
    similarity = images @ weights.T  # (N, C)
    logits = scale * similarity
    if multi_label:
        probability = 1 / (1 + np.exp(-logits))
    else:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probability = shifted / shifted.sum(axis=1, keepdims=True)
    if top_k < probability.shape[1]:  # the top_k in O(C), then only those sorted
        top = np.argpartition(-probability, top_k - 1, axis=1)[:, :top_k]
    else:
        top = np.broadcast_to(np.arange(probability.shape[1]), probability.shape)
    picked = np.take_along_axis(probability, top, axis=1)
    order = np.take_along_axis(top, np.argsort(-picked, axis=1, kind="stable"), axis=1)
    return [
        [
            (int(c), float(probability[n, c]), float(similarity[n, c]))
            for c in row
            if not multi_label or probability[n, c] >= threshold
        ]
        for n, row in enumerate(order)
    ]


async def compute_weights(
    spec: ClassifierSpec, model: LoadedVersion, examples: list[list[bytes]]
) -> np.ndarray:
    """The (C, D) weights of a classifier definition for one model version."""
    if spec.kind == "zero-shot":
        return await zero_shot_weights(model, spec.labels, spec.templates)
    return await few_shot_weights(model, examples, spec.labels, spec.templates, spec.text_weight)


async def saved_weights(
    store: ClassifierStore, spec: ClassifierSpec, model: LoadedVersion
) -> np.ndarray:
    """A saved classifier's weights for a model version: stored, or computed now (the first
    use with that version, or a deploy preparing it) and stored."""
    weights = store.weights(spec, model.version)
    if weights is None:
        weights = await compute_weights(spec, model, store.examples(spec))
        store.save_weights(spec, model.version, weights)
    return weights


class ClassifierStore:
    """Saved classifiers in the model repository; names are unique across models."""

    def __init__(self, repo_root: Path) -> None:
        self.root = repo_root
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._specs: dict[str, ClassifierSpec] | None = None  # read once, then kept up to date

    def _folder(self, spec: ClassifierSpec) -> Path:
        return self.root / spec.model / "classifiers" / spec.name

    def _all(self) -> dict[str, ClassifierSpec]:
        if self._specs is None:
            specs = {}
            for path in sorted(self.root.glob("*/classifiers/*/classifier.json")):
                raw = json.loads(path.read_text())
                specs[path.parent.name] = ClassifierSpec(
                    **{**raw, "labels": tuple(raw["labels"]), "templates": tuple(raw["templates"])}
                )
            self._specs = specs
        return self._specs

    def names(self) -> list[str]:
        return sorted(self._all())

    def of_model(self, model: str) -> list[ClassifierSpec]:
        return [spec for spec in self._all().values() if spec.model == model]

    def get(self, name: str) -> ClassifierSpec:
        spec = self._all().get(name)
        if spec is None:
            raise NotFound(
                f"classifier {name!r} not found. {available('classifiers', self.names())}"
            )
        return spec

    def create(self, spec: ClassifierSpec, examples: Sequence[Sequence[bytes]] = ()) -> None:
        check_name(spec.name, "classifier")
        with self._lock:
            if spec.name in self._all():
                raise AlreadyExists(f"classifier {spec.name!r} already exists")
            folder = self._folder(spec)
            staging = folder.with_name(f".staging-{spec.name}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for c, images in enumerate(examples):
                (staging / "examples" / str(c)).mkdir(parents=True)
                for j, data in enumerate(images):
                    (staging / "examples" / str(c) / f"{j}.img").write_bytes(data)
            (staging / "classifier.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
            staging.rename(folder)
            self._all()[spec.name] = spec

    def examples(self, spec: ClassifierSpec) -> list[list[bytes]]:
        base = self._folder(spec) / "examples"
        return [
            [
                p.read_bytes()
                for p in sorted((base / str(c)).glob("*.img"), key=lambda p: int(p.stem))
            ]
            for c in range(len(spec.labels))
        ]

    def versions(self, spec: ClassifierSpec) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self._folder(spec).glob("weights-*.npy"))

    def weights(self, spec: ClassifierSpec, version: int) -> np.ndarray | None:
        key = (spec.name, version)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = self._folder(spec) / f"weights-{version}.npy"
        if not path.is_file():
            return None
        weights = np.load(path)
        self._remember(key, weights)
        return weights

    def save_weights(self, spec: ClassifierSpec, version: int, weights: np.ndarray) -> None:
        path = self._folder(spec) / f"weights-{version}.npy"
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, weights.astype(np.float32))
        tmp.replace(path)
        self._remember((spec.name, version), weights)

    def delete(self, name: str) -> None:
        spec = self.get(name)
        with self._lock:
            shutil.rmtree(self._folder(spec))
            del self._all()[name]
            for key in [k for k in self._cache if k[0] == name]:
                del self._cache[key]

    def _remember(self, key: tuple[str, int], weights: np.ndarray) -> None:
        self._cache[key] = weights
        while len(self._cache) > 64:
            self._cache.popitem(last=False)
