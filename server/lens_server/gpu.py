"""Whether this process can use a CUDA GPU through torch, decided once.

Machines without an NVIDIA driver are told apart without importing torch (a second and
hundreds of MiB the CPU serving path does not need); elsewhere torch decides.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

# One of these is present wherever an NVIDIA driver is reachable: the kernel driver's version
# (Linux), its control device (containers and sandboxes that pass devices, not /proc, through),
# the GPU paravirtualisation device (WSL).
_DRIVER = (Path("/proc/driver/nvidia/version"), Path("/dev/nvidiactl"), Path("/dev/dxg"))


def driver_present() -> bool:
    """Whether an NVIDIA driver is reachable (where it is, `cuda_available` imports torch)."""
    return any(p.exists() for p in _DRIVER)


@functools.cache
def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device."""
    if not driver_present() or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None
