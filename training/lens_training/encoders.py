"""Architectures as data: open_clip's towers built from JSON configs.

An architecture is a config in open_clip's format (`embed_dim`, `vision_cfg`, optional
`text_cfg`): a `.json` file, a name in `training/configs/`, or any model open_clip knows.
ViT and ResNet image towers and the text transformer are open_clip's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lens_server.repository import ImageSpec

CONFIGS = Path(__file__).resolve().parent / "configs"
# The image statistics OpenAI's CLIP normalises with; lens's own towers train with them too.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def load_arch(arch: str) -> tuple[str, dict[str, Any]]:
    """(name, config) of an architecture; ValueError listing what exists if unknown."""
    import open_clip

    path = Path(arch)
    if path.suffix == ".json":
        if not path.is_file():
            raise ValueError(f"architecture file {arch} does not exist")
        return path.stem, json.loads(path.read_text())
    if (CONFIGS / f"{arch}.json").is_file():
        return arch, json.loads((CONFIGS / f"{arch}.json").read_text())
    config = open_clip.get_model_config(arch)
    if config is None:
        local = sorted(p.stem for p in CONFIGS.glob("*.json"))
        raise ValueError(
            f"unknown architecture {arch!r}. Available: {', '.join(local)}, a .json config, or "
            "any of open_clip.list_models()"
        )
    return arch, config


def image_size(config: dict[str, Any]) -> int:
    size = config["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def image_spec_of_arch(config: dict[str, Any]) -> ImageSpec:
    """How images are resized and normalised for an architecture lens trains: in training
    and, through the manifest, in the server."""
    return ImageSpec(size=image_size(config), mean=OPENAI_MEAN, std=OPENAI_STD)


def vision_tower(config: dict[str, Any], **overrides: Any) -> Any:
    """open_clip's image tower (ViT, ModifiedResNet when `layers` is a list, or a timm model
    with `timm_model_name`). `"stem": "cifar"` gives a timm ResNet the stem used for 32×32
    images (He et al.'s CIFAR ResNets, SimCLR's CIFAR-10 runs): a 3×3 stride-1 convolution
    and no max-pool, so the first stage sees 32×32 rather than 8×8."""
    from open_clip.model import _build_vision_tower
    from torch import nn

    vision = {**config["vision_cfg"], **overrides}
    stem = vision.pop("stem", None)
    tower = _build_vision_tower(config["embed_dim"], vision)
    if stem == "cifar":
        trunk = getattr(tower, "trunk", None)
        if trunk is None or not hasattr(trunk, "maxpool"):
            raise ValueError('"stem": "cifar" needs a timm ResNet (timm_model_name)')
        trunk.conv1 = nn.Conv2d(3, trunk.conv1.out_channels, 3, 1, 1, bias=False)
        trunk.maxpool = nn.Identity()
    elif stem is not None:
        raise ValueError(f"unknown stem {stem!r}: use cifar")
    return tower


def clip_model(config: dict[str, Any]) -> Any:
    """open_clip's CLIP (image and text towers, learnable logit scale)."""
    from open_clip.model import CLIP

    keys = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale")
    return CLIP(**{k: v for k, v in config.items() if k in keys})
