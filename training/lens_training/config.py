"""What a training run is asked to do: `TrainConfig`, validated once, where it is made.

Every field with a domain is checked in `__post_init__`, so a bad value is refused with its
name and value before any data is read or any file written (the CLI prints the message as its
one line). What depends on the data (the held-out count against the set's size) is checked
where the data is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lens_training import data as datasets
from lens_training.augment import PRESETS
from lens_training.evaluate import DIGIT_TEMPLATES
from lens_training.methods import METHODS

OPTIMIZERS = ("adamw", "lars")
PRECISIONS = ("bf16", "fp32")
SEEDS = 2**32  # numpy's seeds are 0 .. 2³² − 1


class TrainError(ValueError):
    """The run cannot start or go on; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    method: str
    data: str
    arch: str
    out: str
    steps: int = 0  # 0: from epochs
    epochs: float = 1.0
    batch_size: int = 256
    accum: int = 1
    lr: float = 0.0  # 0: the method's default
    weight_decay: float = -1.0  # < 0: the method's default
    warmup: float = 0.1  # share of the steps
    optimizer: str = ""  # "": the method's default (adamw, or lars for SimCLR)
    temperature: float | None = None  # None: the method's (SimCLR 0.5, MoCo 0.2)
    mask_ratio: float = 0.75
    queue: int = 4096  # MoCo's negatives; a multiple of the batch (per accumulation step)
    momentum: float | None = None  # MoCo's and BYOL's target EMA; None: 0.99, 0.996
    momentum_end: float | None = None  # where its cosine ends; None: 0.999 (MoCo), 1 (BYOL)
    barlow_lambda: float = 5e-3  # Barlow Twins' off-diagonal weight
    predictor_lr_scale: float = 1.0  # BYOL: the predictor learns at lr × this
    invariance_weight: float = 25.0  # VICReg's loss weights
    variance_weight: float = 25.0
    covariance_weight: float = 1.0
    projector_dim: int = 0  # 0: the method's (MoCo 2048, BYOL 4096, Barlow/VICReg 8192)
    augment: str = ""  # SimCLR: paper or digits; "": digits for the built-in sets, else paper
    holdout: float = 1000  # a count of images, or a fraction < 1
    seed: int = 0
    device: str = "auto"
    precision: str = "bf16"
    eval_every: int = 0  # steps; 0: at the end only
    checkpoint_every: int = 0  # steps; 0: at the end only
    init: str = ""  # NAME[:VERSION] in the repository
    repo: str = "models"
    templates: tuple[str, ...] = DIGIT_TEMPLATES
    baseline: bool = True  # evaluate the random-init encoder too
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TrainError(f"unknown method {self.method!r}: use {_either(METHODS)}")
        _choose("optimizer", self.optimizer, ("", *OPTIMIZERS))
        _choose("precision", self.precision, PRECISIONS)
        _choose("augment", self.augment, ("", *PRESETS))
        holdout, (name, colon, version) = self.holdout, self.init.partition(":")
        domains = (  # field, whether its value is in the domain, the domain in words
            ("steps", self.steps >= 0, ">= 0 (0: from epochs)"),
            ("epochs", math.isfinite(self.epochs) and self.epochs > 0, "finite and > 0"),
            ("batch_size", self.batch_size >= 2, ">= 2"),
            ("accum", self.accum >= 1, ">= 1"),
            ("lr", math.isfinite(self.lr) and self.lr >= 0, "finite and >= 0 (0: the method's)"),
            ("weight_decay", math.isfinite(self.weight_decay), "finite (< 0: the method's)"),
            ("warmup", 0 <= self.warmup <= 1, "a share of the steps in [0, 1]"),
            (
                "temperature",
                self.temperature is None or 0 < self.temperature < math.inf,
                "finite and > 0",
            ),
            ("mask_ratio", 0 < self.mask_ratio < 1, "in (0, 1)"),
            ("queue", self.queue >= 1, ">= 1"),
            ("momentum", self.momentum is None or 0 <= self.momentum < 1, "in [0, 1)"),
            (
                "momentum_end",
                self.momentum_end is None or (self.momentum or 0) <= self.momentum_end <= 1,
                "in [momentum, 1]",
            ),
            ("barlow_lambda", _weight(self.barlow_lambda), "finite and >= 0"),
            (
                "predictor_lr_scale",
                math.isfinite(self.predictor_lr_scale) and self.predictor_lr_scale > 0,
                "finite and > 0",
            ),
            ("invariance_weight", _weight(self.invariance_weight), "finite and >= 0"),
            ("variance_weight", _weight(self.variance_weight), "finite and >= 0"),
            ("covariance_weight", _weight(self.covariance_weight), "finite and >= 0"),
            ("projector_dim", self.projector_dim >= 0, ">= 1 (0: the method's)"),
            (
                "holdout",
                0 < holdout < 1 or (1 <= holdout < math.inf and holdout == int(holdout)),
                "a whole count >= 1 or a fraction < 1",
            ),
            ("seed", 0 <= self.seed < SEEDS, f"in [0, {SEEDS})"),
            ("eval_every", self.eval_every >= 0, ">= 0 (0: at the end)"),
            ("checkpoint_every", self.checkpoint_every >= 0, ">= 0 (0: at the end)"),
            ("device", _is_device(self.device), "auto or a torch device (cpu, cuda, cuda:N)"),
            (
                "init",
                not self.init or (bool(name) and (not colon or version.isdigit())),
                "NAME or NAME:VERSION",
            ),
            ("templates", bool(self.templates), "at least one template"),
        )
        for field_name, ok, domain in domains:
            if not ok:
                raise TrainError(
                    f"{field_name} must be {domain}, got {getattr(self, field_name)!r}"
                )
        if self.batch_size % self.accum:
            raise TrainError(
                f"batch_size {self.batch_size} must be divisible by accum {self.accum}"
            )
        if self.method == "moco" and self.queue % (self.batch_size // self.accum):
            each = "batch_size" if self.accum == 1 else "batch_size / accum"
            raise TrainError(
                f"queue {self.queue} must be divisible by the {each}, "
                f"{self.batch_size // self.accum} (the keys enqueued per step)"
            )
        if self.method != "byol" and self.predictor_lr_scale != 1:
            raise TrainError(
                f"predictor_lr_scale is BYOL's (its predictor's lr × it), got "
                f"{self.predictor_lr_scale!r} for {self.method}"
            )
        if self.method == "vicreg" and not (
            self.invariance_weight or self.variance_weight or self.covariance_weight
        ):
            raise TrainError("VICReg needs at least one of its loss weights > 0, got all 0")

    def defaults(self) -> TrainConfig:
        """The method's published settings where the user gave none."""
        lr, wd, opt = {
            "clip": (5e-4, 0.2, "adamw"),
            "simclr": (0.3 * self.batch_size / 256, 1e-6, "lars"),
            "mae": (1.5e-4 * self.batch_size / 256, 0.05, "adamw"),
            # MoCo v2: SGD 0.03 per 256; BYOL and Barlow Twins: LARS 0.2 per 256 (Barlow's
            # biases 0.0048); VICReg: LARS 0.2 per 256 (here: LARS, with the papers' decay)
            "moco": (0.03 * self.batch_size / 256, 1e-4, "lars"),
            "byol": (0.2 * self.batch_size / 256, 1.5e-6, "lars"),
            "barlow": (0.2 * self.batch_size / 256, 1.5e-6, "lars"),
            "vicreg": (0.2 * self.batch_size / 256, 1e-6, "lars"),
        }[self.method]
        return replace(
            self,
            lr=self.lr or lr,
            weight_decay=wd if self.weight_decay < 0 else self.weight_decay,
            optimizer=self.optimizer or opt,
        )

    def method_settings(self) -> dict[str, Any]:
        """The keyword settings of `methods.build` this run's method is built with."""
        return {
            "temperature": self.temperature,
            "augment": self.augment_preset,
            "mask_ratio": self.mask_ratio,
            "queue": self.queue,
            "momentum": self.momentum,
            "momentum_end": self.momentum_end,
            "barlow_lambda": self.barlow_lambda,
            "loss_weights": (self.invariance_weight, self.variance_weight, self.covariance_weight),
            "projector_dim": self.projector_dim,
        }

    @property
    def augment_preset(self) -> str:
        """SimCLR's augmentation preset: the one named, else digits for the built-in digit
        sets (flips change a digit's class) and the paper's for everything else."""
        return self.augment or ("digits" if self.data in datasets.BUILTIN else "paper")

    def holdout_count(self, images: int) -> int:
        """How many of a labelled set of `images` are held out for evaluation; TrainError if
        that is none, or leaves none to train on."""
        count = round(self.holdout * images) if self.holdout < 1 else int(self.holdout)
        if count < 1:
            raise TrainError(
                f"holdout {self.holdout:g} of the {images} images of {self.data} holds out none"
            )
        if count >= images:
            raise TrainError(
                f"holdout {self.holdout:g} must be less than the {images} images of {self.data}"
            )
        return count


def _either(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + f" or {choices[-1]}"


def _choose(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TrainError(f"{name} must be {_either(tuple(c for c in choices if c))}, got {value!r}")


def _weight(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def _is_device(name: str) -> bool:
    """`auto`, or a device string torch can parse (cpu, cuda, cuda:1, mps, ...)."""
    if name == "auto":
        return True
    try:
        torch.device(name)
    except RuntimeError:
        return False
    return True
