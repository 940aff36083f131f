"""fp16 `torch.export` programs on a torch device: the GPU fast path.

A version may carry, beside each ONNX tower, the same tower as a `torch.export` program with
fp16 weights (written by lens's exporters). On a CUDA device the tower runs it through CUDA
graphs captured at load, one per batch bucket (a batch is padded up to the smallest bucket that
holds it), which removes the per-kernel launch cost of small batches; on the CPU (tests, or
`--runtime program` without a GPU) it runs eagerly.

Imported only where torch is installed (`server.runtime.choose` imports it lazily).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch
from torch.export.passes import move_to_device_pass

from lens_server.errors import ModelError

log = logging.getLogger(__name__)

# Batch sizes a CUDA graph is captured for, up to the batcher's largest batch.
BUCKETS = (1, 8, 32, 128, 256)


class ProgramTower:
    """One fp16 program on `device`; `__call__` as every tower (numpy in and out), and
    `run_device` for inputs already on the device (from device preprocessing)."""

    def __init__(self, path: Path, dim: int, device: str, max_batch: int) -> None:
        try:
            program = torch.export.load(str(path))
        except Exception as e:  # torch raises many types for unreadable or newer programs
            raise ModelError(f"{path}: torch could not load the program: {e}") from e
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        (name,) = program.graph_signature.user_inputs
        example = placeholders[name].meta["val"]
        self.input_dtype: torch.dtype = example.dtype
        self.input_shape = tuple(int(s) for s in example.shape[1:])
        self.device = torch.device(device)
        self.dim = dim
        # Moves the weights and rewrites the devices the exporter wrote into the graph (its
        # tensor metadata checks name the device it traced on, the CPU).
        program = move_to_device_pass(program, self.device)
        self._module = program.module()
        self.providers = [f"torch-fp16:{self.device}"]
        cuda = self.device.type == "cuda"
        self._buckets = sorted({b for b in BUCKETS if b < max_batch} | {max_batch}) if cuda else []
        # Captured now, on one thread: a capture while other threads launch work would fail.
        self._graphs = {b: _Graph(self._module, b, self.input_shape, self) for b in self._buckets}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        out = self.run_device(x)
        if out.shape != (len(batch), self.dim):
            raise ModelError(
                f"program gave {tuple(out.shape)}, expected ({len(batch)}, {self.dim})"
            )
        return out.cpu().numpy()

    @torch.inference_mode()
    def run_device(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) on the device → float32 (N, dim) on the device, on the current stream."""
        x = x.to(self.input_dtype)
        bucket = next((b for b in self._buckets if b >= len(x)), None)
        if bucket is None:
            return self._module(x).float()
        return self._graphs[bucket].run(x)


class _Graph:
    """One CUDA graph of the module at a fixed batch size, with its static buffers.

    Replays run on the graph's own stream, one at a time: callers on other streams wait for
    it before and after, so two threads never overwrite each other's static buffers.
    """

    def __init__(
        self, module: torch.nn.Module, size: int, shape: tuple[int, ...], tower: ProgramTower
    ) -> None:
        self.stream = torch.cuda.Stream(tower.device)
        self.input = torch.zeros((size, *shape), dtype=tower.input_dtype, device=tower.device)
        self.lock = threading.Lock()
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            for _ in range(2):  # lazy initialisation (cuBLAS handles, autotuning) off the graph
                module(self.input)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(
                self.graph, stream=self.stream, capture_error_mode="thread_local"
            ):
                self.output = module(self.input)
        self.stream.synchronize()
        log.info("captured a CUDA graph for batches of %d", size)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        caller = torch.cuda.current_stream(x.device)
        with self.lock:
            self.stream.wait_stream(caller)  # x is ready
            with torch.cuda.stream(self.stream):
                self.input[: len(x)].copy_(x, non_blocking=True)
                self.graph.replay()
                # A copy: the next replay overwrites the static output.
                out = self.output[: len(x)].to(torch.float32, copy=True)
            caller.wait_stream(self.stream)
        out.record_stream(caller)
        return out
