"""Training objectives, one per file: each a thin module over a pure function."""

from lens_training.losses.barlow import BarlowTwinsLoss, barlow_twins_loss
from lens_training.losses.byol import BYOLLoss, byol_loss
from lens_training.losses.clip import ClipLoss, clip_loss
from lens_training.losses.mae import MaskedPixelLoss, masked_pixel_loss
from lens_training.losses.moco import MoCoLoss, info_nce_queue
from lens_training.losses.ntxent import NTXentLoss, nt_xent
from lens_training.losses.vicreg import VICRegLoss, vicreg_loss

__all__ = [
    "BYOLLoss",
    "BarlowTwinsLoss",
    "ClipLoss",
    "MaskedPixelLoss",
    "MoCoLoss",
    "NTXentLoss",
    "VICRegLoss",
    "barlow_twins_loss",
    "byol_loss",
    "clip_loss",
    "info_nce_queue",
    "masked_pixel_loss",
    "nt_xent",
    "vicreg_loss",
]
