"""PyTorch modules → ONNX graphs with a dynamic batch axis."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

OPSET = 23
MAX_BATCH = 4096


def export(module: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = OPSET) -> None:
    """Writes `module(example)` as a one-file ONNX graph; axis 0 of input and output is free.

    The input is named `input`, the output `output` (names are read back from the graph).
    """
    module = module.eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    quiet = logging.getLogger("torch.onnx")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                external_data=False,
                dynamo=True,
                verbose=False,
            )
    finally:
        quiet.level = level
