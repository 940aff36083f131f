"""Training objectives, one per file: each a thin module over a pure function."""

from training.losses.clip import ClipLoss, clip_loss
from training.losses.mae import MaskedPixelLoss, masked_pixel_loss
from training.losses.ntxent import NTXentLoss, nt_xent

__all__ = ["ClipLoss", "MaskedPixelLoss", "NTXentLoss", "clip_loss", "masked_pixel_loss", "nt_xent"]
