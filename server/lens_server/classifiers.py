"""Zero-shot and few-shot classifiers: their weights, and where saved ones are kept.

Zero-shot weights are open_clip's `build_zero_shot_classifier`: per label, the mean of its
L2-normalised template embeddings, normalised again. Few-shot weights are class prototypes:
the normalised mean embedding of each label's example images, optionally mixed with the
zero-shot weight. Logits are the model's logit scale (CLIP's learned temperature, from the
manifest; 1/0.07 for models without one) times cosine similarity.

Linear classifiers (linear probes) are trained from labelled images: multinomial logistic
regression on the served (L2-normalised) embeddings. Their weights are (C, D+1) = [W | b], the
logits x @ W.T + b with no logit scale, and the `similarity` a reply carries is the logit. Their
examples are kept (unless made with `kept_examples=False`, as a fine-tuned head is) so the probe
is re-fitted on a new model version's embeddings.

A saved classifier lives in the model repository, `<repo>/<model>/classifiers/<name>/`:
`classifier.json` (its definition), `examples/` (few-shot images, kept so the weights can be
recomputed), and `weights-<version>.npy` per model version, computed on first use.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

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
    kind: str  # "zero-shot", "few-shot" or "linear"
    labels: tuple[str, ...]
    templates: tuple[str, ...] = ()
    text_weight: float = 0.0
    shots: int = 0
    # Linear: whether examples/ holds the training images (False: the weights of the version
    # it was made with are all there is), and the held-out accuracy of its fit (-1: none held
    # out).
    kept_examples: bool = True
    held_out_accuracy: float = -1.0


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
    linear: bool = False,
) -> list[list[tuple[int, float, float]]]:
    """Per image, (label index, probability, similarity) of the top_k labels. `linear`
    weights are [W | b]: the logits are images @ W.T + b, reported as the similarity."""
    if linear:
        similarity = images @ weights[:, :-1].T + weights[:, -1]
        logits = similarity
    else:
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


def check_image(data: bytes, what: str) -> None:
    """InvalidInput naming `what` unless `data` is an image Pillow can read (before any fit)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InvalidInput(f"{what} is not an image Pillow can read: {e}") from None


def fit_softmax(
    x: np.ndarray, y: np.ndarray, classes: int, c: float = 1.0, tol: float = 1e-6
) -> np.ndarray:
    """(classes, D+1) [W | b] of L2-regularised multinomial logistic regression on `x`
    standardised per feature, mapped back to `x`'s own scale: the minimum of
    0.5 ||W_z||^2 + c * sum(cross-entropy) over the standardised features z (bias not
    penalised), as scikit-learn's LogisticRegression(C=c) after a StandardScaler, by L-BFGS."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0
    z = np.hstack([(x - mean) / std, np.ones((n, 1))])
    onehot = np.zeros((n, classes))
    onehot[np.arange(n), y] = 1.0
    penalty = np.ones(d + 1)
    penalty[-1] = 0.0
    lam = 1.0 / (c * n)  # the objective divided by c * n

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        logits = z @ w.T
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        log_p = logits - log_norm
        loss = -(onehot * log_p).sum() / n + 0.5 * lam * float((w * w * penalty).sum())
        grad = (np.exp(log_p) - onehot).T @ z / n + lam * w * penalty
        return loss, grad

    w = lbfgs(objective, np.zeros((classes, d + 1)), tol)
    weights = w[:, :-1] / std
    bias = w[:, -1] - weights @ mean
    return np.hstack([weights, bias[:, None]])


def lbfgs(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    start: np.ndarray,
    tol: float,
    memory: int = 10,
    iterations: int = 2000,
) -> np.ndarray:
    """The minimum of a smooth convex `objective` (value, gradient) by L-BFGS with a
    backtracking (Armijo) line search, stopping when the largest gradient entry is < tol."""
    x = start
    loss, grad = objective(x)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []  # (s, y, 1 / y.s)
    for _ in range(iterations):
        if float(np.abs(grad).max()) < tol:
            break
        q = grad.copy()
        alphas = []
        for s_k, y_k, rho in reversed(steps):
            alpha = rho * float((s_k * q).sum())
            q -= alpha * y_k
            alphas.append(alpha)
        if steps:
            s_k, y_k, _ = steps[-1]
            q *= float((s_k * y_k).sum()) / float((y_k * y_k).sum())
        for (s_k, y_k, rho), alpha in zip(steps, reversed(alphas), strict=True):
            q += (alpha - rho * float((y_k * q).sum())) * s_k
        direction = -q
        slope = float((grad * direction).sum())
        if slope >= 0:  # not a descent direction: start the memory again
            steps.clear()
            direction, slope = -grad, -float((grad * grad).sum())
        t = 1.0 if steps else min(1.0, 1.0 / float(np.abs(grad).sum()))
        while True:
            new = x + t * direction
            new_loss, new_grad = objective(new)
            if new_loss <= loss + 1e-4 * t * slope or t < 1e-12:
                break
            t /= 2
        s_k, y_k = new - x, new_grad - grad
        curvature = float((s_k * y_k).sum())
        if curvature > 1e-12:
            steps.append((s_k, y_k, 1.0 / curvature))
            del steps[:-memory]
        if t < 1e-12:
            break
        x, loss, grad = new, new_loss, new_grad
    return x


def held_out_split(
    y: np.ndarray, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, held-out) indices: `fraction` of each class held out (rounded), at
    least one of each class kept for training; seeded."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    held: list[int] = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        out = min(round(fraction * len(members)), len(members) - 1)
        held.extend(int(i) for i in members[:out])
        train.extend(int(i) for i in members[out:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def accuracy(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    logits = x @ weights[:, :-1].T + weights[:, -1]
    return float((logits.argmax(axis=1) == y).mean())


async def linear_fit(
    model: LoadedVersion,
    examples: Sequence[Sequence[bytes]],
    labels: Sequence[str],
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """(C, D+1) [W | b] fitted to all the examples' embeddings, and the held-out accuracy of
    the same fit on a stratified 80/20 split (-1 when no class has an example to spare)."""
    if model.image is None:
        raise FailedPrecondition(f"model {model.name} has no image tower")
    if len(labels) < 2:
        raise InvalidInput(f"a linear classifier needs two labels or more, got {len(labels)}")
    vectors, targets = [], []
    for c, (label, images) in enumerate(zip(labels, examples, strict=True)):
        if not images:
            raise InvalidInput(f"label {label!r} has no example images")
        for i in range(0, len(images), CHUNK):
            vectors.append(await model.embed(list(images[i : i + CHUNK])))
        targets.append(np.full(len(images), c))
    x, y = np.concatenate(vectors), np.concatenate(targets)
    train, held = held_out_split(y, seed=seed)
    score = -1.0
    if len(held):
        score = accuracy(fit_softmax(x[train], y[train], len(labels)), x[held], y[held])
    return fit_softmax(x, y, len(labels)), score


async def compute_weights(
    spec: ClassifierSpec, model: LoadedVersion, examples: list[list[bytes]]
) -> np.ndarray:
    """The weights of a classifier definition for one model version: (C, D), or (C, D+1)
    [W | b] for a linear one."""
    if spec.kind == "linear":
        if not spec.kept_examples:
            raise FailedPrecondition(
                f"classifier {spec.name!r} kept no training examples, so it cannot be "
                f"re-fitted for model {spec.model!r} version {model.version}: use a version "
                "it has weights for, or train it again on this one"
            )
        weights, _ = await linear_fit(model, examples, spec.labels)
        return weights
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
