"""Small CPU runs on the built-in `mnist` set (4,000 / 1,000), under a minute of training each
on two cores: what the quality tests and `bench/train.py` train.

CLIP uses `lens-tiny-clip-digits` (a 16-token text context: digit captions are at most 12
tokens, and the 77-token context of `lens-tiny-clip` made the text tower most of the cost) and
smaller batches for more steps in the same time. SimCLR uses NT-Xent at temperature 0.2,
which learns far faster than 0.5 at this length (kNN 0.89 against 0.79 after 150 steps).
MAE uses patches of 8 (16 tokens) and embeds with the whitened mean of the patch tokens.
MoCo, BYOL, Barlow Twins and VICReg train SimCLR's tiny ResNet with its optimiser and
augmentations and a projector 512 wide (the papers' 2,048-8,192 are for ResNet-50's 2,048
features; the tiny tower has 64). The momentum networks keep a constant momentum, measured
on one seed over 230 steps (2026-12-03, kNN top-1; the papers' schedules are for hundreds of
epochs): MoCo 0.99 with a queue of 1,024 keys (four batches: a short queue keeps keys of an
encoder close to the current one): 0.896 on seed 1, against 0.870 for 0.9 → 0.99, 0.883
for 0.996, 0.884 for 0.999, 0.855 with a queue of 4,096, 0.886 with the loss symmetrised
over the two views (solo-learn's MoCo v2+, 2× the step); then 350 steps, which MoCo's
cheap key tower (no gradient) fits in the minute: 0.906-0.919 on seeds 0-2.
BYOL, over 230 × 256 on seed 0: the stiffer its target, the better (τ 0: 0.520, 0.9 → 0.99:
0.695, 0.99: 0.729, 0.996: 0.762, 0.999: 0.784, 0.9995: 0.803, 0.9999: 0.815), its target
then barely moving from the random init; weight decay 0.05 or 0.2, lr 1e-3 or 4e-3 no better
(0.795, 0.794, 0.797, 0.711). A predictor learning at 10× the rate (SimSiam's and
DirectPred's finding) lets a faster target work (0.9995: 0.812, 0.99: 0.813), and then more,
smaller steps pay: 400 × 128 0.877, 650 × 64 0.886, but each over the minute; the plan is
350 × 128 with τ 0.99 (0.870; τ 0.98 0.865, 0.995 0.841). None meets the 0.90 gate. Barlow
Twins λ 0.01 (the paper's 5e-3 gave 0.894 on seed 2; 0.0025 0.883, 0.01 0.911).
Figures of three seeds: bench/results/train-*.json, the README and docs/training.md.
"""

from __future__ import annotations

from typing import Any

# The two-view methods on the tiny ResNet: SimCLR's schedule, each with its own loss settings.
_TWO_VIEW: dict[str, Any] = {
    "arch": "lens-tiny-resnet",
    "steps": 230,
    "batch_size": 256,
    "lr": 2e-3,
    "optimizer": "adamw",
}

PLANS: dict[str, dict[str, Any]] = {
    "clip": {"arch": "lens-tiny-clip-digits", "steps": 900, "batch_size": 128, "lr": 2e-3},
    "simclr": {**_TWO_VIEW, "temperature": 0.2},
    "mae": {"arch": "lens-tiny-vit", "steps": 1200, "batch_size": 256, "lr": 3e-3},
    "moco": {
        **_TWO_VIEW,
        "steps": 350,  # its steps are the cheapest of the four: 350 in under a minute
        "projector_dim": 512,
        "queue": 1024,
        "momentum": 0.99,
        "momentum_end": 0.99,
    },
    "byol": {
        **_TWO_VIEW,
        "steps": 350,
        "batch_size": 128,  # more, smaller steps (see above)
        "projector_dim": 512,
        "momentum": 0.99,
        "momentum_end": 0.99,
        "predictor_lr_scale": 10.0,
    },
    "barlow": {**_TWO_VIEW, "projector_dim": 512, "barlow_lambda": 0.01},
    "vicreg": {**_TWO_VIEW, "projector_dim": 512},
}


def plan_settings(name: str, method: str) -> dict[str, Any]:
    """The settings of plan `name` for `method` (`lens train METHOD --plan quick`); ValueError
    naming the plans and methods there are."""
    if name != "quick":
        raise ValueError(f"unknown plan {name!r}: use quick")
    if method not in PLANS:
        raise ValueError(f"no quick plan for {method!r}: there are {', '.join(PLANS)}")
    return dict(PLANS[method])
