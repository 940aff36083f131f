"""The training loop: one loop for every method.

AdamW (CLIP, MAE) or LARS (SimCLR) as each paper used; linear warm-up then cosine decay;
gradient accumulation; bf16 autocast and channels-last on a GPU; seeds; checkpoints every N
steps that resume exactly (model, optimiser, schedule, RNG states and the position in the
seeded data order; `checkpoint.py`); DDP under `torchrun` with negatives gathered across
ranks; a progress bar; metrics to `RUN_DIR/metrics.jsonl` (and TensorBoard when installed).
The run's settings are a `TrainConfig` (`config.py`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lens_training import checkpoint, distributed, watch
from lens_training import data as datasets
from lens_training.checkpoint import CHECKPOINT, FORMAT
from lens_training.config import TrainConfig, TrainError
from lens_training.encoders import image_spec_of_arch, load_arch
from lens_training.evaluate import evaluate, features
from lens_training.methods import Method, build

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: no CUDA device on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Trains `config.method` and writes `out/checkpoint.pt` and `out/metrics.jsonl`."""

    def __init__(self, config: TrainConfig, resume: bool = False, quiet: bool = False) -> None:
        self.out = Path(config.out)
        self.quiet = quiet  # no progress bar
        if resume:
            config = self._resumed_config(config)
        self.config = config = config.defaults()
        self.device = pick_device(config.device)
        self.rank, self.world = distributed.setup(self.device)
        seed_everything(config.seed)
        self.arch_name, self.arch = self._arch()
        self.method = self._method()
        self.train_set, self.test_set = self._data()
        self.tokens = self._tokens() if config.method == "clip" else None
        if config.init:
            self._init_from_repository(config.init)
        self.steps_per_epoch = len(self.train_set) // config.batch_size
        if self.steps_per_epoch == 0:
            raise TrainError(
                f"{len(self.train_set)} training images is less than one batch "
                f"of {config.batch_size}"
            )
        self.total = config.steps or max(1, int(config.epochs * self.steps_per_epoch))
        self.model: nn.Module = self.method
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = self._optimizer()
        self.schedule = self._schedule()
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._board = _tensorboard(self.out) if distributed.is_main() else None
        self.baseline: dict[str, float] = {}
        if resume:
            self._load_checkpoint()

    # -- set-up ------------------------------------------------------------------------------

    def _arch(self) -> tuple[str, dict[str, Any]]:
        """(name, config) of the architecture: the one asked for, else (with `--init` alone)
        that of the version started from."""
        if self.config.init and not self.config.arch:
            saved = checkpoint.of_version(Path(self.config.repo), self.config.init)
            return saved["arch_name"], saved["arch"]
        try:
            return load_arch(self.config.arch)
        except ValueError as e:
            raise TrainError(str(e)) from None

    def _method(self) -> Method:
        config = self.config
        try:
            method = build(config.method, self.arch, **config.method_settings()).to(self.device)
        except (ValueError, TypeError) as e:
            raise TrainError(f"architecture {self.arch_name} for {config.method}: {e}") from None
        if self.device.type == "cuda":
            method = method.to(memory_format=torch.channels_last)
        return method

    def _data(self) -> tuple[datasets.ImageSet, datasets.ImageSet | None]:
        """(train, held-out): a labelled set is split by the seed, an unlabelled one is all
        training data."""
        try:
            full = datasets.load(self.config.data, image_spec_of_arch(self.arch))
        except (datasets.DataError, OSError) as e:
            raise TrainError(str(e)) from None
        if full.skipped:
            log.warning("%s: %d unreadable images skipped", full.name, full.skipped)
        if full.labels is None:
            return full, None
        return full.split(self.config.holdout_count(len(full)), self.config.seed)

    def _tokens(self) -> torch.Tensor:
        import open_clip

        captions = self.train_set.captions
        if captions is None:
            generator = torch.Generator().manual_seed(self.config.seed)
            try:
                captions = datasets.caption_labels(self.train_set, self.config.templates, generator)
            except datasets.DataError as e:
                raise TrainError(str(e)) from None
        context = self.arch["text_cfg"].get("context_length", 77)
        return open_clip.SimpleTokenizer(context_length=context)(captions)

    def _optimizer(self) -> torch.optim.Optimizer:
        config = self.config
        # (weight decay, lr scale) -> parameters: no decay on gains, biases, the logit scale
        # and embeddings; BYOL's predictor may learn faster than the rest (predictor_lr_scale)
        groups_of: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, p in self.method.named_parameters():
            if p.requires_grad:
                plain = p.ndim < 2 or "logit_scale" in name or "embedding" in name
                scale = config.predictor_lr_scale if name.startswith("predictor.") else 1.0
                groups_of.setdefault((0.0 if plain else config.weight_decay, scale), []).append(p)
        groups = [
            {"params": params, "weight_decay": wd, "lr": config.lr * scale}
            for (wd, scale), params in groups_of.items()
        ]
        if config.optimizer == "lars":
            from timm.optim import Lars

            return Lars(groups, lr=config.lr, momentum=0.9, trust_clip=True)
        betas = (0.9, 0.98) if config.method == "clip" else (0.9, 0.95)
        # one fused kernel for every parameter: ~8% of a tiny CPU step, more on a GPU
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=1e-6, fused=fused)

    def _schedule(self) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up over `warmup` of the steps, then cosine decay to zero."""
        warm = int(self.config.warmup * self.total)
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: (
                (s + 1) / warm
                if s < warm
                else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, self.total - warm)))
            ),
        )

    def _init_from_repository(self, ref: str) -> None:
        saved = checkpoint.of_version(Path(self.config.repo), ref)
        self._check_compatible(saved, f"--init {ref}")
        try:
            self.method.load_state_dict(saved["model"])
        except RuntimeError as e:  # a projector width or queue size other than the run's
            first = str(e).splitlines()[1:2] or [str(e)]
            raise TrainError(
                f"--init {ref}: its weights do not fit this run's settings: {first[0].strip()}"
            ) from None
        log.info("initialised from %s", ref)

    def _check_compatible(self, saved: dict[str, Any], what: str) -> None:
        checkpoint.check_compatible(saved, self.config.method, self.arch_name, self.arch, what)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, until: int | None = None) -> dict[str, Any]:
        """Trains to the end (or stops after step `until`, checkpointed, to resume later)."""
        config = self.config
        stop = min(self.total, until or self.total)
        if self.step == 0 and config.baseline and self.test_set is not None:
            self.baseline = self._evaluate()
            self._log({"step": 0, "eval": self.baseline, "baseline": True})
        bar = tqdm(
            total=self.total,
            initial=self.step,
            disable=self.quiet or not distributed.is_main(),
            unit="step",
            dynamic_ncols=True,
        )
        started, seen = time.perf_counter(), 0
        self.method.train()
        loss = float("nan")
        while self.step < stop:
            loss = self._train_step()
            self.step += 1
            seen += config.batch_size
            rate = seen / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
            bar.update(1)
            record: dict[str, Any] = {
                "step": self.step,
                "loss": loss,
                "lr": self.schedule.get_last_lr()[0],
                "images_per_s": rate,
            }
            if config.eval_every and self.step % config.eval_every == 0 and self.step < self.total:
                record["eval"] = self._evaluate()
            self._log(record)
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save()
        bar.close()
        result = {
            "steps": self.step,
            "seconds": time.perf_counter() - started,
            "final_loss": loss if self.step else None,
            "eval": self._evaluate(),
            "baseline": self.baseline,
        }
        self._log({"step": self.step, "eval": result["eval"], "final": True})
        self.save(result)
        self._pictures()
        return result

    def _pictures(self) -> None:
        """`report.png` from the run's records, `embedding.png` from the held-out features."""
        if not distributed.is_main():
            return
        title = f"lens train {self.config.method} on {self.config.data} ({self.arch_name})"
        watch.report(self.out, title)  # from metrics.jsonl: a resumed run's earlier steps too
        test = self.test_set
        if test is not None and test.labels is not None:
            self.method.eval()
            with torch.no_grad():
                held_out = features(self.method, test).float().numpy()
            watch.embedding(self.out, held_out, test.labels.numpy(), test.classes, title)

    def _train_step(self) -> float:
        config = self.config
        epoch, position = divmod(self.step, self.steps_per_epoch)
        order = torch.randperm(
            len(self.train_set), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch)
        )
        batch = order[position * config.batch_size : (position + 1) * config.batch_size]
        total = 0.0
        for micro in batch.chunk(config.accum):
            index = distributed.shard(micro)
            inputs = {"pixels": self.train_set.pixels[index].to(self.device, non_blocking=True)}
            if self.tokens is not None:
                inputs["tokens"] = self.tokens[index].to(self.device, non_blocking=True)
            with torch.autocast(
                self.device.type,
                dtype=torch.bfloat16,
                enabled=self.device.type == "cuda" and config.precision == "bf16",
            ):
                loss = self._loss(inputs) / config.accum
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(self.method.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.method.after_step(self.step + 1, self.total)  # momentum networks follow
        return total

    def _loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            # DDP hooks run on forward(); route the method's loss through it
            return self.model(inputs)
        return self.method.loss(inputs)

    def _calibrate(self, most: int = 20_000) -> None:
        """Refits the embedding's data statistics (MAE's whitening) to the current weights, on
        up to `most` training images chosen by the seed."""
        pixels = self.train_set.pixels
        if len(pixels) > most:
            generator = torch.Generator().manual_seed(self.config.seed)
            pixels = pixels[torch.randperm(len(pixels), generator=generator)[:most]]
        self.method.calibrate(pixels)

    def _evaluate(self) -> dict[str, float]:
        """Calibrates, then evaluates on the held-out set (when there is one)."""
        self._calibrate()
        if self.test_set is None:
            return {}
        return evaluate(self.method, self.train_set, self.test_set, self.config.templates)

    # -- checkpoints and logs ----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.config.method,
            "arch_name": self.arch_name,
            "arch": self.arch,
            "config": asdict(self.config),
            "step": self.step,
            "total": self.total,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": checkpoint.rng_state(),
            "baseline": self.baseline,
        }

    def save(self, result: dict[str, Any] | None = None) -> Path:
        path = self.out / CHECKPOINT
        if not distributed.is_main():
            return path
        self.out.mkdir(parents=True, exist_ok=True)
        state = self.state()
        if result is not None:
            state["result"] = result
        return checkpoint.save(path, state)

    def _resumed_config(self, given: TrainConfig) -> TrainConfig:
        path = self.out / CHECKPOINT
        if not path.is_file():
            raise TrainError(f"--resume: {path} does not exist")
        saved = checkpoint.load(path)
        old = checkpoint.config_of(saved)
        if (given.method, load_arch(given.arch)[1]) != (old.method, saved["arch"]):
            raise TrainError(
                f"--resume: {path} is a {old.method} run of {saved['arch_name']}, "
                f"not {given.method} of {given.arch}"
            )
        return replace(
            old, steps=max(given.steps, old.steps) or old.steps, init="", device=given.device
        )

    def _load_checkpoint(self) -> None:
        saved = checkpoint.load(self.out / CHECKPOINT)
        self._check_compatible(saved, "--resume")
        self.method.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.step, self.baseline = saved["step"], saved.get("baseline", {})
        checkpoint.restore_rng(saved["rng"])

    def _log(self, record: dict[str, Any]) -> None:
        if not distributed.is_main():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.history.append(record)
        if self._board is not None:
            flat = {k: v for k, v in record.items() if isinstance(v, float)}
            flat.update({f"eval/{k}": v for k, v in record.get("eval", {}).items()})
            for key, value in flat.items():
                self._board.add_scalar(key, value, record["step"])


def _tensorboard(out: Path) -> Any:
    """A TensorBoard writer into `out/tensorboard` when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))
