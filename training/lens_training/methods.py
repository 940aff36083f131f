"""The training methods (CLIP, SimCLR and MAE here; MoCo v2, BYOL, Barlow Twins and VICReg in
`siamese.py`). Each owns its encoder(s) and training-only parts, turns a batch
into its loss (`loss`), and exposes what is exported and evaluated (`image_encoder`,
`encode`), kept apart from the objective so that export never carries training code."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lens_training.augment import AugmentConfig, SimCLRAugment
from lens_training.distributed import gather_with_grad
from lens_training.encoders import OPENAI_MEAN, OPENAI_STD, clip_model, image_size, vision_tower
from lens_training.heads import MAEDecoder, ProjectionHead, encode_visible, patchify
from lens_training.losses import ClipLoss, MaskedPixelLoss, NTXentLoss
from lens_training.whitening import Whitening

METHODS = ("clip", "simclr", "mae", "moco", "byol", "barlow", "vicreg")


class Method(nn.Module):
    """Pixels arrive as uint8 (N, 3, S, S); `normalize` makes the tower input."""

    kind: str
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.arch = config
        self.size = image_size(config)
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float (N, 3, S, S) → the tower's input."""
        if pixels.dtype == torch.uint8:
            pixels = pixels.float() / 255
        return (pixels - self.mean) / self.std

    def image_encoder(self) -> nn.Module:
        """The module exported as `image.onnx`: normalised pixels → (N, dim)."""
        raise NotImplementedError

    def calibrate(self, pixels: torch.Tensor) -> None:
        """Fits what the embedding learns from data rather than by gradient (MAE's whitening)
        on uint8 training images (N, 3, S, S). Nothing for CLIP and SimCLR."""

    def after_step(self, step: int, total: int) -> None:
        """Called by the loop after optimiser step `step` of `total` (1-based): where momentum
        networks follow their online ones (MoCo, BYOL). Nothing for the others."""

    @torch.no_grad()
    def encode(
        self, pixels: torch.Tensor, module: nn.Module | None = None, batch: int = 512
    ) -> torch.Tensor:
        """uint8 (or [0, 1] float) pixels (N, 3, S, S) → the outputs of `module` (default: the
        exported image tower, so its embeddings) in eval mode, in batches, float32 on the CPU."""
        module = module or self.image_encoder()
        was_training = self.training
        self.eval()
        device = self.mean.device
        out = torch.cat(
            [
                module(self.normalize(pixels[i : i + batch].to(device))).float().cpu()
                for i in range(0, len(pixels), batch)
            ]
        )
        self.train(was_training)
        return out

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss; only so that DistributedDataParallel's hooks run around it."""
        return self.loss(batch)


class ClipMethod(Method):
    """CLIP: image and text towers, symmetric InfoNCE (Radford et al., 2021)."""

    kind = "clip"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.model: Any = clip_model(config)
        self.criterion = ClipLoss()

    def image_encoder(self) -> nn.Module:
        return self.model.visual

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.model.encode_image(self.normalize(batch["pixels"]))
        text = self.model.encode_text(batch["tokens"])
        with torch.no_grad():  # CLIP clips the temperature at 100
            self.model.logit_scale.clamp_(0, math.log(100))
        return self.criterion(
            gather_with_grad(image), gather_with_grad(text), self.model.logit_scale
        )


class SimCLRMethod(Method):
    """SimCLR: two augmented views, projection head, NT-Xent (Chen et al., 2020)."""

    kind = "simclr"

    def __init__(
        self, config: dict[str, Any], temperature: float = 0.5, augment: AugmentConfig | None = None
    ) -> None:
        super().__init__(config)
        self.encoder: Any = vision_tower(config)
        self.head = ProjectionHead(config["embed_dim"])
        self.criterion = NTXentLoss(temperature)
        self.augment = SimCLRAugment(augment or AugmentConfig(self.size))

    def image_encoder(self) -> nn.Module:
        return self.encoder

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = batch["pixels"].cpu()  # augmentation runs on the CPU generator
        views = [self.normalize(self.augment(pixels).to(self.mean.device)) for _ in range(2)]
        z_a, z_b = (self.head(self.encoder(v)) for v in views)
        return self.criterion(gather_with_grad(z_a), gather_with_grad(z_b))


class MAEMethod(Method):
    """MAE: the ViT encoder sees 25% of the patches, a small decoder rebuilds the pixels of
    the rest (He et al., 2021). Embeddings: the mean of the patch tokens over all patches,
    whitened with statistics of the training images (`training/whitening.py`)."""

    kind = "mae"

    def __init__(
        self,
        config: dict[str, Any],
        mask_ratio: float = 0.75,
        decoder: dict[str, int] | None = None,
    ) -> None:
        super().__init__(config)
        if isinstance(config["vision_cfg"].get("layers"), (list, tuple)):
            raise ValueError("MAE needs a ViT image tower, not a ResNet")
        self.encoder: Any = vision_tower(config, pool_type="avg")
        self.encoder.proj = None  # the projection is not trained by MAE: embeddings are tokens
        self.mask_ratio = mask_ratio
        grid: tuple[int, int] = self.encoder.grid_size
        self.patch: int = self.encoder.patch_size[0]
        self.decoder = MAEDecoder(
            self.encoder.transformer.width,
            grid[0] * grid[1],
            self.patch * self.patch * 3,
            **(decoder or config.get("mae_decoder", {})),
        )
        self.whiten = Whitening(self.encoder.transformer.width)
        self.criterion = MaskedPixelLoss()

    def image_encoder(self) -> nn.Module:
        return nn.Sequential(self.encoder, self.whiten)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # runs before the children load: checkpoints from before the whitening load unwhitened
        unwhitened = Whitening(len(self.whiten.mean)).to(self.whiten.mean.device)
        for name, buffer in unwhitened.named_buffers():
            state_dict.setdefault(f"{prefix}whiten.{name}", buffer)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def calibrate(self, pixels: torch.Tensor) -> None:
        self.whiten.fit(self.encode(pixels, self.encoder))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = self.normalize(batch["pixels"])
        tokens, mask, ids_restore = encode_visible(self.encoder, pixels, self.mask_ratio)
        prediction = self.decoder(tokens, ids_restore)  # (N, L, patch² · 3)
        return self.criterion(prediction, patchify(pixels, self.patch), mask)


def build(
    kind: str,
    config: dict[str, Any],
    *,
    temperature: float | None = None,
    augment: str = "paper",
    mask_ratio: float = 0.75,
    queue: int = 4096,
    momentum: float | None = None,
    momentum_end: float | None = None,
    barlow_lambda: float = 5e-3,
    loss_weights: tuple[float, float, float] = (25.0, 25.0, 1.0),
    projector_dim: int = 0,
) -> Method:
    """Method `kind` on architecture `config`, with the settings that apply to it: the
    temperature (SimCLR's NT-Xent, 0.5; MoCo's InfoNCE, 0.2) and augmentation preset
    (`augment`, see `AugmentConfig.preset`) of the two-view methods, MAE's `mask_ratio`,
    MoCo's `queue` size, the momentum of MoCo's and BYOL's target networks and where its
    cosine schedule ends, Barlow Twins' λ, VICReg's invariance, variance and covariance
    weights, and the projector's width (0: the paper's). None: the paper's. ValueError for a
    bad setting or an architecture the method cannot train."""
    if kind == "clip":
        if "text_cfg" not in config:
            raise ValueError("CLIP needs an architecture with a text tower (text_cfg)")
        return ClipMethod(config)
    if kind == "mae":
        return MAEMethod(config, mask_ratio=mask_ratio)
    if kind not in METHODS:
        raise ValueError(f"unknown method {kind!r}: use one of {', '.join(METHODS)}")
    views = AugmentConfig.preset(augment, image_size(config))
    if kind == "simclr":
        return SimCLRMethod(
            config, temperature=0.5 if temperature is None else temperature, augment=views
        )
    from lens_training import siamese

    width = {"projector_dim": projector_dim} if projector_dim else {}
    if kind in ("moco", "byol"):
        paper = {"moco": (0.99, 0.999), "byol": (0.996, 1.0)}[kind]
        start = paper[0] if momentum is None else momentum
        end = max(paper[1], start) if momentum_end is None else momentum_end
        if kind == "moco":
            t = 0.2 if temperature is None else temperature
            return siamese.MoCoMethod(config, t, queue, start, end, augment=views, **width)
        return siamese.BYOLMethod(config, start, end, augment=views, **width)
    if kind == "barlow":
        return siamese.BarlowTwinsMethod(config, barlow_lambda, augment=views, **width)
    return siamese.VICRegMethod(config, loss_weights, augment=views, **width)
