"""PyTorch modules → `torch.export` programs with fp16 weights: the GPU runtime's input.

The ONNX graph is what every machine serves; the program beside it is what a GPU serves
fastest (fp16 weights, CUDA graphs per batch size; see `server.runtime.program`). Floating
inputs are fp16 too; the output is whatever the module returns in fp16 (the server casts).
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from lens_training.export.onnx import MAX_BATCH

log = logging.getLogger(__name__)


def export_fp16(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Writes `module` as an fp16 `torch.export` program with a free batch axis.

    Only the weights the traced forward uses are kept: a tower of a two-tower model would
    otherwise carry the other tower's weights too.
    """
    module = copy.deepcopy(module).eval().half()
    if example.is_floating_point():
        example = example.half()
    program = _export(module, example)
    unused = _unused_weights(program)
    if unused:
        for name in unused:
            _empty(module, name)
        program = _export(module, example)
    torch.export.save(program, str(path))


def _export(module: torch.nn.Module, example: torch.Tensor) -> ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


def _unused_weights(program: ExportedProgram) -> list[str]:
    """Parameters and buffers no node of the graph reads."""
    users = {n.name: len(n.users) for n in program.graph.nodes if n.op == "placeholder"}
    kinds = (InputKind.PARAMETER, InputKind.BUFFER)
    return [
        spec.target
        for spec in program.graph_signature.input_specs
        if spec.kind in kinds
        and spec.target is not None
        and users.get(getattr(spec.arg, "name", ""), 1) == 0
    ]


def _empty(module: torch.nn.Module, name: str) -> None:
    """Replaces the weight `name` ("a.b.weight") by an empty tensor of its dtype."""
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    old = getattr(owner, attr)
    empty = torch.empty(0, dtype=old.dtype)
    if attr in owner._parameters:
        owner._parameters[attr] = torch.nn.Parameter(empty, requires_grad=False)
    else:
        owner._buffers[attr] = empty
