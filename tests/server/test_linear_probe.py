"""Linear classifiers: the numpy fit against scikit-learn's, the [W | b] weights contract
scored like the others, and the refusal to re-fit one that kept no examples."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lens_server.classifiers import (
    ClassifierSpec,
    ClassifierStore,
    compute_weights,
    fit_softmax,
    held_out_split,
    scores,
)
from lens_server.errors import FailedPrecondition


def blobs(n: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d))
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    x = centers[y] + 1.5 * rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("n", "d", "c", "strength"), [(300, 16, 3, 1.0), (600, 64, 10, 0.1)])
def test_fit_equals_scikit_learn(n, d, c, strength):
    x, y = blobs(n, d, c)
    weights = fit_softmax(x, y, c, c=strength)
    assert weights.shape == (c, d + 1)
    reference = make_pipeline(
        StandardScaler(), LogisticRegression(C=strength, tol=1e-10, max_iter=10000)
    ).fit(x, y)
    ours = softmax(x @ weights[:, :-1].T + weights[:, -1])
    np.testing.assert_allclose(ours, reference.predict_proba(x), atol=2e-4)


def test_held_out_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(3), [10, 5, 1])
    train, held = held_out_split(y, seed=3)
    assert sorted(np.concatenate([train, held])) == list(range(len(y)))
    assert [int((y[held] == k).sum()) for k in range(3)] == [2, 1, 0]  # the lone one trains
    again, _ = held_out_split(y, seed=3)
    other, _ = held_out_split(y, seed=4)
    assert list(again) == list(train) and list(other) != list(train)


def test_linear_weights_are_w_and_b_without_scale():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(4, 9)).astype(np.float32)
    images = rng.normal(size=(3, 8)).astype(np.float32)
    logits = images @ weights[:, :-1].T + weights[:, -1]
    ranked = scores(images, weights, 100.0, 4, False, 0.0, linear=True)
    for n, row in enumerate(ranked):
        assert [c for c, _, _ in row] == list(np.argsort(-logits[n]))
        for c, probability, similarity in row:
            assert similarity == pytest.approx(logits[n, c], abs=1e-5)
            assert probability == pytest.approx(softmax(logits)[n, c], abs=1e-6)
    multi = scores(images, weights, 100.0, 4, True, 0.5, linear=True)
    assert all(p >= 0.5 for row in multi for _, p, _ in row)
    assert sum(len(r) for r in multi) == int((logits >= 0).sum())


def test_saved_head_without_examples_is_refused_for_another_version(tmp_path):
    store = ClassifierStore(tmp_path)
    spec = ClassifierSpec("head", "tiny", "linear", ("a", "b"), kept_examples=False)
    store.create(spec)
    head = np.arange(6, dtype=np.float32).reshape(2, 3)
    store.save_weights(spec, 1, head)
    again = ClassifierStore(tmp_path)  # read back from classifier.json
    assert again.get("head") == spec
    np.testing.assert_array_equal(again.weights(spec, 1), head)
    other = SimpleNamespace(name="tiny", version=2)
    with pytest.raises(FailedPrecondition, match=r"kept no training examples.*version 2"):
        asyncio.run(compute_weights(spec, other, []))  # type: ignore[arg-type]
