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
    temperature: float = 0.5
    mask_ratio: float = 0.75
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
            ("temperature", 0 < self.temperature < math.inf, "finite and > 0"),
            ("mask_ratio", 0 < self.mask_ratio < 1, "in (0, 1)"),
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

    def defaults(self) -> TrainConfig:
        """The method's published settings where the user gave none."""
        lr, wd, opt = {
            "clip": (5e-4, 0.2, "adamw"),
            "simclr": (0.3 * self.batch_size / 256, 1e-6, "lars"),
            "mae": (1.5e-4 * self.batch_size / 256, 0.05, "adamw"),
        }[self.method]
        return replace(
            self,
            lr=self.lr or lr,
            weight_decay=wd if self.weight_decay < 0 else self.weight_decay,
            optimizer=self.optimizer or opt,
        )

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


def _is_device(name: str) -> bool:
    """`auto`, or a device string torch can parse (cpu, cuda, cuda:1, mps, ...)."""
    if name == "auto":
        return True
    try:
        torch.device(name)
    except RuntimeError:
        return False
    return True
