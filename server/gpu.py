"""Whether this process can use a CUDA GPU through torch, decided once.

Machines without an NVIDIA driver are told apart without importing torch (a second and
hundreds of MiB the CPU serving path does not need); elsewhere torch decides.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

# Present wherever the NVIDIA kernel driver is loaded (Linux).
_DRIVER = Path("/proc/driver/nvidia/version")


@functools.cache
def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device."""
    if not _DRIVER.exists() or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None
