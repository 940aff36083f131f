"""Training objectives, one per file: each a thin module over a pure function."""

from lens_training.losses.clip import ClipLoss, clip_loss
from lens_training.losses.mae import MaskedPixelLoss, masked_pixel_loss
from lens_training.losses.ntxent import NTXentLoss, nt_xent

__all__ = ["ClipLoss", "MaskedPixelLoss", "NTXentLoss", "clip_loss", "masked_pixel_loss", "nt_xent"]
