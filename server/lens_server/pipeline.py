"""Images decoded where they are embedded: a version's image pipeline on a GPU.

Where the image tower runs on a CUDA GPU, JPEGs are not decoded on the CPU: a worker thread
only checks each input's header (`DevicePreprocessor.admit`), and the batch goes to the GPU
as bytes, where nvJPEG decodes it, torch resizes, crops and normalises it, and the tower
embeds it, without the pixels crossing back to the host (IO binding for ONNX Runtime, device
tensors for the fp16 program). Inputs nvJPEG does not take (PNG, WebP, CMYK, EXIF-rotated
JPEGs...) are preprocessed on the CPU as before and join the batch as pixels.

Batches overlap: the batcher runs two or more at once, each worker thread on its own CUDA
stream, so one batch decodes while another runs the model. A JPEG whose header is fine but
whose data is not fails alone, as its own request's INVALID_ARGUMENT (`Partial`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from lens_server.batching import Partial
from lens_server.config import RuntimeConfig
from lens_server.errors import FailedPrecondition, InvalidInput, LensError
from lens_server.gpu import cuda_available, torch_installed
from lens_server.preprocess import ImagePreprocessor
from lens_server.repository.manifest import ImageSpec
from lens_server.runtime.base import DeviceTower

if TYPE_CHECKING:  # both load torch: imported where a device pipeline is built
    from lens_server.preprocess.device import DevicePreprocessor

# An admitted input: its position in its request, and its bytes (for the device) or pixels.
Admitted = tuple[int, bytes | np.ndarray]


def image_pipeline(
    spec: ImageSpec, config: RuntimeConfig, cpu: ImagePreprocessor, tower: DeviceTower
) -> DeviceImages | None:
    """The device pipeline for this tower, or None where images are decoded on the CPU.

    `config.image_decode`: `auto` decodes on the device when the tower runs on a CUDA GPU,
    `device` insists (on the tower's device, the CPU included: how tests run it), `cpu` never.
    """
    mode = config.image_decode
    if mode == "cpu":
        return None
    device = str(tower.device)
    on_gpu = device.startswith("cuda") and cuda_available()
    if mode == "auto" and not on_gpu:
        return None
    if not torch_installed():
        raise FailedPrecondition("decoding images on the device needs torch and torchvision")
    from lens_server.preprocess.device import DevicePreprocessor, device_decodable

    if not device_decodable(spec):
        if mode == "device":
            raise FailedPrecondition(
                f"image interpolation {spec.interpolation!r} has no device implementation"
            )
        return None
    return DeviceImages(DevicePreprocessor(spec, cpu.limits, device, cpu), tower)


class DeviceImages:
    """`admit` on the CPU workers, `run` on the batcher's threads (a batch of `Admitted`)."""

    def __init__(self, preprocess: DevicePreprocessor, tower: DeviceTower) -> None:
        self._preprocess = preprocess
        self._tower = tower
        self._local = threading.local()  # each batcher thread's CUDA stream

    def admit(self, data: bytes, position: int) -> Admitted:
        return position, self._preprocess.admit(data)

    def run(self, items: list[Admitted]) -> Partial:
        """(N) admitted inputs → float32 (N, dim) on the host, and the inputs that failed."""
        import torch

        with torch.inference_mode(), self._stream():
            pixels, errors = self._preprocess([x for _, x in items])
            out = self._tower.run_device(pixels).cpu().numpy()
        failed: dict[int, LensError] = {
            i: InvalidInput(f"input {items[i][0]}: {e}") for i, e in errors.items()
        }
        return Partial(out, failed)

    def _stream(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        device = self._preprocess.device
        if device.type != "cuda":
            return contextlib.nullcontext()
        if not hasattr(self._local, "stream"):
            self._local.stream = torch.cuda.Stream(device)
        return torch.cuda.stream(self._local.stream)
