"""Evaluation on a labelled held-out set: kNN, linear probe, zero-shot.

kNN top-1 follows the self-supervised literature (Wu et al., 2018; Caron et al., 2021):
cosine similarity to the training features, the k = 20 nearest vote with weight
exp(similarity / 0.07). The linear probe is a logistic regression on frozen features
(scikit-learn). Zero-shot builds one weight per class from prompt templates exactly as
open_clip's `build_zero_shot_classifier` (mean of normalised template embeddings, normalised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lens_training.data import ImageSet
from lens_training.methods import ClipMethod, Method

SIMPLE = ("a photo of a {}.",)
DIGIT_TEMPLATES = (
    "a photo of the number {}.",
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "a drawing of the digit {}.",
    "a black and white photo of the number {}.",
)


def features(method: Method, data: ImageSet) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) of a whole set, in eval mode."""
    return F.normalize(method.encode(data.pixels), dim=1)


def knn_top1(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    sims, idx = (test @ train.T).topk(min(k, len(train)), dim=1)  # (M, k)
    weights = (sims / temperature).exp()
    votes = torch.zeros(len(test), classes).scatter_add_(1, train_labels[idx], weights)
    return float((votes.argmax(1) == test_labels).float().mean())


def linear_probe_top1(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    seed: int = 0,
) -> float:
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    probe.fit(train.numpy(), train_labels.numpy())
    return float(probe.score(test.numpy(), test_labels.numpy()))


@torch.no_grad()
def zero_shot_weights(
    method: ClipMethod, classes: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """(C, D): per class, the normalised mean of its normalised template embeddings."""
    import open_clip

    tokenizer = open_clip.SimpleTokenizer(context_length=method.model.context_length)
    device = method.mean.device
    weights = []
    for name in classes:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        embedded = F.normalize(method.encode_text(tokens).float(), dim=-1).mean(dim=0)
        weights.append(F.normalize(embedded, dim=-1))
    return torch.stack(weights).cpu()


def zero_shot_top1(
    method: ClipMethod,
    test: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    templates: Sequence[str],
) -> float:
    was_training = method.training
    method.eval()
    weights = zero_shot_weights(method, classes, templates)
    method.train(was_training)
    return float(((test @ weights.T).argmax(1) == labels).float().mean())


def spread(features: torch.Tensor) -> dict[str, float]:
    """How far an embedding is from collapse, on L2-normalised features (N, D).

    `embedding_std`: the mean over dimensions of the per-dimension standard deviation, times
    √D (Chen & He, 2021, SimSiam: a collapsed embedding gives 0; unit vectors spread evenly
    over the sphere give about 1). `effective_rank`: exp of the entropy of the normalised
    singular values of the centred features (Roy & Vetterli, 2007), from 1 (a line) to D.
    """
    d = features.shape[1]
    std = float(features.std(dim=0).mean()) * math.sqrt(d)
    singular = torch.linalg.svdvals((features - features.mean(dim=0)).double())
    p = singular / singular.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"embedding_std": std, "effective_rank": float(entropy.exp())}


def evaluate(
    method: Method,
    train: ImageSet,
    test: ImageSet,
    templates: Sequence[str] = DIGIT_TEMPLATES,
    probe: bool = True,
) -> dict[str, float]:
    """Every metric that applies: knn_top1, linear_probe_top1, zero_shot_top1 (CLIP; and
    zero_shot_top1_aliases, by the classes' other names, where the set has them), and the
    held-out embedding's `spread` (embedding_std, effective_rank)."""
    if train.labels is None or test.labels is None:
        return {}
    f_train, f_test = features(method, train), features(method, test)
    metrics = {"knn_top1": knn_top1(f_train, train.labels, f_test, test.labels)}
    metrics.update(spread(f_test))
    if probe:
        metrics["linear_probe_top1"] = linear_probe_top1(f_train, train.labels, f_test, test.labels)
    if isinstance(method, ClipMethod) and test.classes:
        metrics["zero_shot_top1"] = zero_shot_top1(
            method, f_test, test.labels, test.classes, templates
        )
        if test.aliases:  # the same, labelled by each class's first other name ("7")
            metrics["zero_shot_top1_aliases"] = zero_shot_top1(
                method, f_test, test.labels, [a[0] for a in test.aliases], templates
            )
    return metrics


def view_retrieval_top1(method: Method, data: ImageSet, candidates: int = 256) -> float:
    """How often the other augmented view of an image is its nearest among `candidates`
    images' views (SimCLR's pretext task, measured on encoder features)."""
    from lens_training.augment import AugmentConfig, SimCLRAugment

    augment = getattr(method, "augment", None) or SimCLRAugment(AugmentConfig(method.size))
    pixels = data.pixels[:candidates]
    state = torch.get_rng_state()
    torch.manual_seed(1234)  # the same views for every model compared
    a, b = augment(pixels), augment(pixels)
    torch.set_rng_state(state)
    fa, fb = (F.normalize(method.encode(view), dim=1) for view in (a, b))
    return float(((fa @ fb.T).argmax(1) == torch.arange(len(pixels))).float().mean())


def chance(method: str, batch: int, queue: int = 0) -> float | None:
    """The loss of an uninformed model, for the contrastive methods: ln N for CLIP,
    ln(2N − 1) for NT-Xent, ln(1 + K) for MoCo's InfoNCE against a queue of K; None for the
    others (their losses have no such reference)."""
    if method == "clip":
        return float(np.log(batch))
    if method == "simclr":
        return float(np.log(2 * batch - 1))
    if method == "moco":
        return float(np.log(1 + queue))
    return None
