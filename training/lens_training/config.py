"""What a training run is asked to do: `TrainConfig`, validated once, where it is made."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from lens_training import data as datasets
from lens_training.evaluate import DIGIT_TEMPLATES
from lens_training.methods import METHODS


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
        if self.batch_size < 2 or self.accum < 1 or self.batch_size % self.accum:
            raise TrainError(
                f"batch size {self.batch_size} must be >= 2 and divisible by accum {self.accum}"
            )
        if self.precision not in ("bf16", "fp32"):
            raise TrainError(f"precision must be bf16 or fp32, got {self.precision}")
        if self.optimizer not in ("", "adamw", "lars"):
            raise TrainError(f"optimizer must be adamw or lars, got {self.optimizer}")

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


def _either(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + f" or {choices[-1]}"
