"""Losses against direct reference computations, and the methods training with them;
the whitening of MAE embeddings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lens_training.losses import (
    ClipLoss,
    MaskedPixelLoss,
    NTXentLoss,
    clip_loss,
    masked_pixel_loss,
    nt_xent,
)
from lens_training.whitening import Whitening


def nt_xent_reference(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> torch.Tensor:
    """Written out view by view, as the SimCLR paper's algorithm 1."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=1).double()
    n = len(z_a)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = torch.exp(z[i] @ z[positive] / t)
        denominator = sum(torch.exp(z[i] @ z[k] / t) for k in range(2 * n) if k != i)
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


def test_nt_xent_equals_the_reference():
    torch.manual_seed(0)
    z_a, z_b = torch.randn(6, 5), torch.randn(6, 5)
    for t in (0.1, 0.5, 1.0):
        assert torch.allclose(
            nt_xent(z_a, z_b, t).double(), nt_xent_reference(z_a, z_b, t), atol=1e-5
        )
    assert torch.allclose(NTXentLoss(0.5)(z_a, z_b), nt_xent(z_a, z_b, 0.5))


def test_nt_xent_of_identical_views():
    """Two identical views of orthogonal images: the positive has similarity 1, every
    negative 0, so the loss is ln(e^(1/t) + 2N − 2) − 1/t."""
    n, t = 4, 0.5
    z = torch.eye(n, 8)
    expected = math.log(math.exp(1 / t) + 2 * n - 2) - 1 / t
    assert nt_xent(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-5)
    # uninformative features: every candidate alike, the loss is chance, ln(2N − 1)
    same = torch.ones(n, 8)
    assert nt_xent(same, same, t).item() == pytest.approx(math.log(2 * n - 1), rel=1e-5)


def test_nt_xent_pairs_view_i_with_view_i_plus_n():
    z_a = torch.eye(3, 3)
    z_b = torch.eye(3, 3)
    good = nt_xent(z_a, z_b, 0.1)
    shuffled = nt_xent(z_a, z_b[[1, 2, 0]], 0.1)  # positives no longer aligned
    assert good < 0.01 < shuffled
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)


def test_clip_loss_is_symmetric_infonce():
    torch.manual_seed(1)
    image, text = torch.randn(5, 7), torch.randn(5, 7)
    scale = torch.tensor(math.log(10.0))
    logits = 10.0 * F.normalize(image, dim=1) @ F.normalize(text, dim=1).T
    i2t = -torch.log_softmax(logits, dim=1).diag().mean()
    t2i = -torch.log_softmax(logits, dim=0).diag().mean()
    assert clip_loss(image, text, scale).item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)
    assert clip_loss(image, text, scale) == pytest.approx(clip_loss(text, image, scale).item())
    assert ClipLoss()(image, text, scale).item() == pytest.approx(
        clip_loss(image, text, scale).item()
    )
    same = torch.ones(6, 4)
    assert clip_loss(same, same, scale).item() == pytest.approx(math.log(6), rel=1e-6)


def test_mae_loss_counts_only_masked_patches():
    torch.manual_seed(2)
    target = torch.randn(2, 6, 12)
    prediction = torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = ((prediction - normed) ** 2).mean(-1)
    expected = per_patch[mask.bool()].mean()
    assert masked_pixel_loss(prediction, target, mask).item() == pytest.approx(expected.item())
    # visible patches do not matter
    changed = prediction.clone()
    changed[~mask.bool()] += 100
    assert masked_pixel_loss(changed, target, mask).item() == pytest.approx(expected.item())
    raw = masked_pixel_loss(prediction, target, mask, norm_pix=False)
    assert raw.item() == pytest.approx(
        ((prediction - target) ** 2).mean(-1)[mask.bool()].mean().item()
    )
    assert MaskedPixelLoss()(prediction, target, mask).item() == pytest.approx(expected.item())


def test_whitening_is_identity_until_fitted_then_decorrelates():
    whiten = Whitening(4, shrink=0.0)
    x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(whiten(x.float()), x.float())
    mixed = x @ torch.tensor([[3.0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0.1, 0], [1, 0, 0, 2]]).double()
    whiten.fit(mixed + 5)
    out = whiten((mixed + 5).float()).double()
    assert out.mean(0).abs().max() < 1e-4
    assert torch.allclose(torch.cov(out.T), torch.eye(4, dtype=torch.float64), atol=1e-3)


def test_whitening_shrinks_small_eigenvalues():
    """A direction with almost no variance is scaled up far less than full whitening would."""
    whiten = Whitening(2, shrink=0.01)
    x = torch.randn(5000, 2, generator=torch.Generator().manual_seed(1))
    x[:, 1] *= 1e-4
    whiten.fit(x)
    out = whiten(x)
    assert out[:, 0].std() == pytest.approx(1.0, rel=0.02)
    assert out[:, 1].std() < 0.02


def test_mae_checkpoints_from_before_the_whitening_load_unwhitened():
    from lens_training.encoders import load_arch
    from lens_training.methods import build

    method = build("mae", load_arch("lens-tiny-vit")[1])
    old = {k: v for k, v in method.state_dict().items() if not k.startswith("whiten.")}
    fresh = build("mae", load_arch("lens-tiny-vit")[1])
    fresh.whiten.fit(torch.randn(100, 64))
    fresh.load_state_dict(old)
    assert torch.equal(fresh.whiten.matrix, torch.eye(64))
    assert torch.equal(fresh.whiten.mean, torch.zeros(64))


def test_each_method_trains_with_its_loss_module():
    """The methods compute their objective through the loss modules, so the modules' checks
    (NT-Xent's temperature) guard training too."""
    from lens_training.encoders import load_arch
    from lens_training.methods import build

    vit, clip = load_arch("lens-tiny-vit")[1], load_arch("lens-tiny-clip")[1]
    simclr = build("simclr", vit, temperature=0.2)
    assert isinstance(simclr.criterion, NTXentLoss) and simclr.criterion.temperature == 0.2
    assert isinstance(build("clip", clip).criterion, ClipLoss)
    assert isinstance(build("mae", vit).criterion, MaskedPixelLoss)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        build("simclr", vit, temperature=0.0)
    # the loss modules hold no state: checkpoints keep the keys they had
    assert not any(k.startswith("criterion") for k in simclr.state_dict())
