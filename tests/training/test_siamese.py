"""MoCo v2, BYOL, Barlow Twins and VICReg: their losses against analytic values and direct
reference implementations, MoCo's queue, the momentum networks, and the methods built on
them (what trains, what is exported)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from lens_training.encoders import load_arch
from lens_training.losses import (
    BarlowTwinsLoss,
    BYOLLoss,
    MoCoLoss,
    VICRegLoss,
    barlow_twins_loss,
    byol_loss,
    info_nce_queue,
    vicreg_loss,
)
from lens_training.losses.barlow import cross_correlation, off_diagonal, on_diagonal, standardize
from lens_training.losses.byol import normalized_mse
from lens_training.losses.vicreg import covariance, variance
from lens_training.methods import build
from lens_training.momentum import KeyQueue, cosine_momentum, ema_update, frozen_copy


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- MoCo ------------------------------------------------------------------------------------


def info_nce_reference(q, k, queue, t) -> torch.Tensor:
    """Query by query, as algorithm 1 of the MoCo paper."""
    q, k, queue = (F.normalize(x.double(), dim=1) for x in (q, k, queue))
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(q)):
        positive = torch.exp(q[i] @ k[i] / t)
        negatives = sum(torch.exp(q[i] @ n / t) for n in queue)
        total -= torch.log(positive / (positive + negatives))
    return total / len(q)


def test_info_nce_against_the_queue_equals_the_reference():
    g = generator(0)
    q, k, queue = (
        torch.randn(5, 8, generator=g),
        torch.randn(5, 8, generator=g),
        torch.randn(12, 8, generator=g),
    )
    for t in (0.07, 0.2, 1.0):
        assert info_nce_queue(q, k, queue, t).double().item() == pytest.approx(
            info_nce_reference(q, k, queue, t).item(), rel=1e-5
        )
    assert MoCoLoss(0.2)(q, k, queue).item() == pytest.approx(
        info_nce_queue(q, k, queue, 0.2).item()
    )


def test_info_nce_of_a_matching_key_and_an_orthogonal_queue():
    """q = k and every negative orthogonal: −log(e^(1/t) / (e^(1/t) + K)) = log(1 + K·e^(−1/t))."""
    t, n, k = 0.2, 3, 5
    q = torch.eye(8)[:n]
    queue = torch.eye(8)[n : n + k]
    expected = math.log(1 + k * math.exp(-1 / t))
    assert info_nce_queue(q, q.clone(), queue, t).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="temperature must be finite and > 0, got 0"):
        MoCoLoss(0)


def test_info_nce_takes_no_gradient_through_the_keys_or_the_queue():
    g = generator(1)
    q = torch.randn(4, 6, generator=g, requires_grad=True)
    k = torch.randn(4, 6, generator=g, requires_grad=True)
    queue = torch.randn(8, 6, generator=g, requires_grad=True)
    info_nce_queue(q, k, queue, 0.2).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


def test_the_queue_holds_exactly_the_last_k_keys_in_order():
    queue = KeyQueue(6, 4)
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(6))  # random unit vectors at first
    batches = [torch.randn(2, 4, generator=generator(i)) for i in range(5)]
    for i, batch in enumerate(batches):
        queue.push(batch)
        assert int(queue.pointer) == (2 * (i + 1)) % 6
    assert torch.equal(queue.ordered(), torch.cat(batches[-3:]))
    assert "keys" in queue.state_dict() and "pointer" in queue.state_dict()
    with pytest.raises(ValueError, match="queue size 6 must be divisible by the batch of keys, 4"):
        queue.push(torch.randn(4, 4))


def test_moco_enqueues_its_keys_and_its_key_encoder_follows_by_momentum():
    moco = build("moco", load_arch("lens-tiny-resnet")[1], queue=64, projector_dim=32)
    pixels = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    before = moco.queue.keys.clone()
    moco.loss({"pixels": pixels}).backward()
    assert int(moco.queue.pointer) == 16
    assert torch.equal(moco.queue.keys[16:], before[16:]) and not torch.equal(
        moco.queue.keys[:16], before[:16]
    )
    assert torch.allclose(moco.queue.keys[:16].norm(dim=1), torch.ones(16))
    assert all(p.grad is None for p in moco.key_encoder.parameters())
    assert all(p.grad is not None for p in moco.encoder.parameters())


# -- momentum --------------------------------------------------------------------------------


def test_cosine_momentum_rises_from_start_to_end():
    assert cosine_momentum(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(30, 100, 0.9, 0.9) == pytest.approx(0.9)  # constant


def test_ema_update_is_the_moving_average():
    online = torch.nn.Linear(3, 2)
    target = frozen_copy(online)
    assert not any(p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    want = [
        0.9 * t + 0.1 * o for t, o in zip(target.parameters(), online.parameters(), strict=True)
    ]
    ema_update(target, online, 0.9)
    for got, expected in zip(target.parameters(), want, strict=True):
        assert torch.allclose(got, expected)


# -- BYOL ------------------------------------------------------------------------------------


def test_byol_loss_analytic_values_and_reference():
    x = torch.eye(4)
    assert normalized_mse(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)  # same direction
    assert normalized_mse(x, x.roll(1, dims=1)).item() == pytest.approx(2.0)  # orthogonal
    assert normalized_mse(x, -x).item() == pytest.approx(4.0)  # opposite
    g = generator(2)
    p_a, p_b, z_a, z_b = (torch.randn(6, 5, generator=g) for _ in range(4))

    def reference(p, z):  # ‖p̄ − z̄‖² row by row
        return torch.stack(
            [((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum() for i in range(6)]
        ).mean()

    expected = reference(p_a, z_b) + reference(p_b, z_a)
    assert byol_loss(p_a, p_b, z_a, z_b).item() == pytest.approx(expected.item(), rel=1e-5)
    assert BYOLLoss()(p_a, p_b, z_a, z_b).item() == pytest.approx(expected.item(), rel=1e-5)


def test_byol_target_receives_no_gradient():
    byol = build("byol", load_arch("lens-tiny-resnet")[1], projector_dim=32)
    pixels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    byol.loss({"pixels": pixels}).backward()
    target = [*byol.target_encoder.parameters(), *byol.target_projector.parameters()]
    assert target and all(p.grad is None and not p.requires_grad for p in target)
    online = [
        *byol.encoder.parameters(),
        *byol.projector.parameters(),
        *byol.predictor.parameters(),
    ]
    assert all(p.grad is not None for p in online)
    # after a step the target moves towards the online network by (1 − τ)
    with torch.no_grad():
        for p in byol.projector.parameters():
            p.add_(1.0)
    old = [p.clone() for p in byol.target_projector.parameters()]
    byol.after_step(0, 10)  # τ = 0.996 at the start of the schedule
    for t, o, before in zip(
        byol.target_projector.parameters(), byol.projector.parameters(), old, strict=True
    ):
        assert torch.allclose(t, 0.996 * before + 0.004 * o, atol=1e-6)


# -- Barlow Twins ----------------------------------------------------------------------------


def barlow_reference(z_a, z_b, lambd) -> torch.Tensor:
    """Entry by entry over the cross-correlation matrix, as the paper's equation 1."""
    a = (z_a - z_a.mean(0)) / z_a.std(0, unbiased=False)
    b = (z_b - z_b.mean(0)) / z_b.std(0, unbiased=False)
    n, d = a.shape
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = float(sum(a[k, i] * b[k, j] for k in range(n)) / n)
            total += (1 - c) ** 2 if i == j else lambd * c**2
    return torch.tensor(total)


def test_barlow_twins_of_identical_standardised_views_has_no_on_diagonal_term():
    z = standardize(torch.randn(64, 6, generator=generator(3)))
    c = cross_correlation(z, z.clone())
    assert on_diagonal(c).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(c, torch.corrcoef(z.T), atol=1e-4)
    assert barlow_twins_loss(z, z, 5e-3).item() == pytest.approx(
        5e-3 * off_diagonal(c).item(), rel=1e-5
    )


def test_barlow_twins_equals_the_reference_and_checks_lambda():
    g = generator(4)
    z_a, z_b = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    for lambd in (0.0, 5e-3, 0.5):
        assert barlow_twins_loss(z_a, z_b, lambd).item() == pytest.approx(
            barlow_reference(z_a, z_b, lambd).item(), rel=1e-4
        )
    assert BarlowTwinsLoss(0.1)(z_a, z_b).item() == pytest.approx(
        barlow_twins_loss(z_a, z_b, 0.1).item()
    )
    with pytest.raises(ValueError, match=r"got -0\.1"):
        BarlowTwinsLoss(-0.1)


# -- VICReg ----------------------------------------------------------------------------------


def test_vicreg_variance_is_zero_when_every_std_reaches_gamma():
    z = 3 * torch.randn(200, 8, generator=generator(5))
    assert variance(z, gamma=1.0).item() == 0.0
    constant = torch.ones(50, 8)  # std 0: the hinge is γ − √ε in every dimension
    assert variance(constant, gamma=1.0).item() == pytest.approx(1 - math.sqrt(1e-4))
    half = torch.cat([3 * torch.randn(100, 4, generator=generator(6)), torch.ones(100, 4)], 1)
    assert variance(half).item() == pytest.approx((1 - math.sqrt(1e-4)) / 2)


def test_vicreg_covariance_and_loss_equal_the_reference():
    g = generator(7)
    z_a, z_b = torch.randn(32, 5, generator=g), torch.randn(32, 5, generator=g)
    cov = torch.cov(z_a.T)
    off = cov - torch.diag(torch.diagonal(cov))
    assert covariance(z_a).item() == pytest.approx((off**2).sum().item() / 5, rel=1e-5)
    assert covariance(torch.randn(4000, 3, generator=g)).item() < 1e-3  # independent dimensions

    def reference(x, y):  # the paper's code (Bardes et al., appendix, algorithm 1)
        repr_loss = F.mse_loss(x, y)
        x, y = x - x.mean(0), y - y.mean(0)
        std_x, std_y = torch.sqrt(x.var(0) + 1e-4), torch.sqrt(y.var(0) + 1e-4)
        std_loss = F.relu(1 - std_x).mean() / 2 + F.relu(1 - std_y).mean() / 2
        cov_x, cov_y = x.T @ x / (len(x) - 1), y.T @ y / (len(y) - 1)

        def off_diagonal(m):
            return m - torch.diag(torch.diagonal(m))

        cov_loss = off_diagonal(cov_x).pow(2).sum() / 5 + off_diagonal(cov_y).pow(2).sum() / 5
        return 25 * repr_loss + 25 * std_loss + cov_loss

    assert vicreg_loss(z_a, z_b).item() == pytest.approx(reference(z_a, z_b).item(), rel=1e-5)
    assert VICRegLoss()(z_a, z_b).item() == pytest.approx(reference(z_a, z_b).item(), rel=1e-5)
    assert vicreg_loss(z_a, z_a.clone(), 1.0, 0.0, 0.0).item() == 0.0  # invariance alone


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ((-1.0, 25.0, 1.0), "invariance_weight must be finite and >= 0, got -1.0"),
        ((25.0, math.nan, 1.0), "variance_weight must be finite and >= 0, got nan"),
        ((25.0, 25.0, -0.5), "covariance_weight must be finite and >= 0, got -0.5"),
        ((0.0, 0.0, 0.0), "at least one of the VICReg loss weights must be > 0"),
    ],
)
def test_vicreg_weights_are_checked(weights, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VICRegLoss(*weights)


# -- the methods -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["moco", "byol", "barlow", "vicreg"])
def test_each_method_exports_its_online_encoder_alone(kind):
    """The exported module is the image tower (ONNX export of it is tested end to end in
    test_train.py); heads, predictors, momentum networks and queue are training-only."""
    method = build(kind, load_arch("lens-tiny-resnet")[1], projector_dim=16, queue=32)
    encoder = method.image_encoder()
    assert encoder is method.encoder
    exported = {id(p) for p in encoder.parameters()}
    training_only = [p for p in method.parameters() if id(p) not in exported]
    assert training_only  # projector (and predictor, target) exist beside it
    assert not any(k.startswith("criterion") for k in method.state_dict())
    out = method.encode(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert out.shape == (4, 64)


def test_method_settings_are_checked_where_the_method_is_built():
    arch = load_arch("lens-tiny-resnet")[1]
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        build("byol", arch, momentum=1.0, projector_dim=8)
    with pytest.raises(ValueError, match=r"momentum_end must be in \[momentum, 1\], got 0.5"):
        build("moco", arch, momentum=0.9, momentum_end=0.5, projector_dim=8)
    with pytest.raises(ValueError, match="unknown method 'dino'"):
        build("dino", arch)
    moco = build("moco", arch, projector_dim=8)
    assert (moco.momentum, moco.momentum_end, moco.criterion.temperature) == (0.99, 0.999, 0.2)
    assert len(moco.queue.keys) == 4096
    byol = build("byol", arch, momentum=0.999, projector_dim=8)
    assert (byol.momentum, byol.momentum_end) == (0.999, 1.0)
    assert build("barlow", arch, projector_dim=8).criterion.lambd == 5e-3
    assert build("vicreg", arch, projector_dim=8).criterion.weights == (25.0, 25.0, 1.0)
