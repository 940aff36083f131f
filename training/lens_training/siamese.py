"""Four two-view methods beside SimCLR: MoCo v2, BYOL, Barlow Twins and VICReg.

Each sees two augmented views of every image (SimCLR's augmentations, `augment.py`) through
the image tower and a projection head; they differ in what keeps the embedding from
collapsing: negatives from a queue of momentum keys (MoCo), a predictor and a slow target
network (BYOL), decorrelated dimensions (Barlow Twins), or variance and covariance terms
(VICReg). The exported and evaluated encoder is the online tower alone (`image_encoder`):
projections, predictors, momentum networks and the queue are training-only.

Shuffled BatchNorm (MoCo): in the paper each GPU's key batch is shuffled across GPUs so that
BatchNorm cannot leak which key is a query's positive through the batch statistics. Here the
queries and the keys each go through their tower as one batch (the whole global batch's
statistics are never shared between a query and its key), so there is no sub-batch to leak
through; across processes each rank's BatchNorm sees its own shard, as the paper's do
without the shuffle. It is not implemented; on small single-process runs it does not apply.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lens_training.augment import AugmentConfig, SimCLRAugment
from lens_training.distributed import gather, gather_with_grad
from lens_training.encoders import vision_tower
from lens_training.heads import ProjectionHead
from lens_training.losses import BarlowTwinsLoss, BYOLLoss, MoCoLoss, VICRegLoss
from lens_training.methods import Method
from lens_training.momentum import KeyQueue, cosine_momentum, ema_update, frozen_copy


class TwoViewMethod(Method):
    """The online tower and the two augmented views every method here starts from."""

    def __init__(self, config: dict[str, Any], augment: AugmentConfig | None) -> None:
        super().__init__(config)
        self.encoder: Any = vision_tower(config)
        self.augment = SimCLRAugment(augment or AugmentConfig(self.size))

    def image_encoder(self) -> nn.Module:
        return self.encoder

    def views(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Two normalised views (N, 3, S, S) of the batch's uint8 pixels, augmented on the
        CPU generator (so a resumed run draws the same)."""
        pixels = batch["pixels"].cpu()
        return [self.normalize(self.augment(pixels).to(self.mean.device)) for _ in range(2)]


class MomentumMethod(TwoViewMethod):
    """A two-view method with a target copy of `online` that follows it by EMA, with the
    momentum rising from `momentum` to `momentum_end` on a cosine over the run."""

    def __init__(
        self,
        config: dict[str, Any],
        augment: AugmentConfig | None,
        momentum: float,
        momentum_end: float,
    ) -> None:
        super().__init__(config, augment)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not momentum <= momentum_end <= 1:
            raise ValueError(f"momentum_end must be in [momentum, 1], got {momentum_end}")
        self.momentum, self.momentum_end = momentum, momentum_end

    def online(self) -> list[nn.Module]:
        """The online modules, in the order of `target()`."""
        raise NotImplementedError

    def target(self) -> list[nn.Module]:
        raise NotImplementedError

    def after_step(self, step: int, total: int) -> None:
        m = cosine_momentum(step, total, self.momentum, self.momentum_end)
        for target, online in zip(self.target(), self.online(), strict=True):
            ema_update(target, online, m)


class MoCoMethod(MomentumMethod):
    """MoCo v2: a query tower and projection trained by InfoNCE against the momentum keys of
    the other view and a queue of K earlier keys (He et al., 2020; Chen et al., 2020, with
    the MLP head and temperature 0.2). Keys of every process are gathered into the queue."""

    kind = "moco"

    def __init__(
        self,
        config: dict[str, Any],
        temperature: float = 0.2,
        queue: int = 4096,
        momentum: float = 0.99,
        momentum_end: float = 0.999,
        projector_dim: int = 2048,
        out_dim: int = 128,
        augment: AugmentConfig | None = None,
    ) -> None:
        super().__init__(config, augment, momentum, momentum_end)
        self.head = ProjectionHead(config["embed_dim"], projector_dim, out_dim)
        self.key_encoder = frozen_copy(self.encoder)
        self.key_head = frozen_copy(self.head)
        self.queue = KeyQueue(queue, out_dim)
        self.criterion = MoCoLoss(temperature)

    def online(self) -> list[nn.Module]:
        return [self.encoder, self.head]

    def target(self) -> list[nn.Module]:
        return [self.key_encoder, self.key_head]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x_q, x_k = self.views(batch)
        query = self.head(self.encoder(x_q))  # (n, out_dim)
        with torch.no_grad():
            key = F.normalize(self.key_head(self.key_encoder(x_k)).float(), dim=1)  # (n, out)
        # the queue changes below; the loss keeps the negatives it was computed with
        loss = self.criterion(query, key, self.queue.keys.clone())
        self.queue.push(gather(key))  # (W·n, out_dim): every process's keys, rank order
        return loss


class BYOLMethod(MomentumMethod):
    """BYOL: an online tower, projection and predictor regress the target network's
    projection of the other view; the target follows by EMA, τ from 0.996 to 1 on a cosine
    (Grill et al., 2020). No negatives, so nothing is gathered across processes."""

    kind = "byol"

    def __init__(
        self,
        config: dict[str, Any],
        momentum: float = 0.996,
        momentum_end: float = 1.0,
        projector_dim: int = 4096,
        out_dim: int = 256,
        augment: AugmentConfig | None = None,
    ) -> None:
        super().__init__(config, augment, momentum, momentum_end)
        self.projector = ProjectionHead(config["embed_dim"], projector_dim, out_dim)
        self.predictor = ProjectionHead(out_dim, projector_dim, out_dim)
        self.target_encoder = frozen_copy(self.encoder)
        self.target_projector = frozen_copy(self.projector)
        self.criterion = BYOLLoss()

    def online(self) -> list[nn.Module]:
        return [self.encoder, self.projector]

    def target(self) -> list[nn.Module]:
        return [self.target_encoder, self.target_projector]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        views = self.views(batch)
        p_a, p_b = (self.predictor(self.projector(self.encoder(v))) for v in views)
        with torch.no_grad():
            z_a, z_b = (self.target_projector(self.target_encoder(v)) for v in views)
        return self.criterion(p_a, p_b, z_a, z_b)


class BarlowTwinsMethod(TwoViewMethod):
    """Barlow Twins: a wide three-layer projector whose two views' cross-correlation is pulled
    to the identity, off-diagonal weighted by λ (Zbontar et al., 2021). The batch statistics
    are of the global batch: projections are gathered across processes."""

    kind = "barlow"

    def __init__(
        self,
        config: dict[str, Any],
        lambd: float = 5e-3,
        projector_dim: int = 8192,
        augment: AugmentConfig | None = None,
    ) -> None:
        super().__init__(config, augment)
        self.projector = ProjectionHead(config["embed_dim"], projector_dim, projector_dim, 3)
        self.criterion = BarlowTwinsLoss(lambd)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        z_a, z_b = (self.projector(self.encoder(v)) for v in self.views(batch))
        return self.criterion(gather_with_grad(z_a), gather_with_grad(z_b))


class VICRegMethod(TwoViewMethod):
    """VICReg: a wide three-layer projector; invariance, variance and covariance terms
    weighted 25/25/1 (Bardes et al., 2022). Variance and covariance are of the global
    batch: projections are gathered across processes."""

    kind = "vicreg"

    def __init__(
        self,
        config: dict[str, Any],
        weights: tuple[float, float, float] = (25.0, 25.0, 1.0),
        projector_dim: int = 8192,
        augment: AugmentConfig | None = None,
    ) -> None:
        super().__init__(config, augment)
        self.projector = ProjectionHead(config["embed_dim"], projector_dim, projector_dim, 3)
        self.criterion = VICRegLoss(*weights)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        z_a, z_b = (self.projector(self.encoder(v)) for v in self.views(batch))
        return self.criterion(gather_with_grad(z_a), gather_with_grad(z_b))
