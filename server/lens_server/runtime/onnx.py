"""ONNX Runtime towers: the best execution providers present, sensible threading."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from lens_server.config import RuntimeConfig
from lens_server.errors import ModelError

if TYPE_CHECKING:  # `run_device` is called on the GPU path only, where torch is installed
    import torch

log = logging.getLogger(__name__)

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_NUMPY_TYPES: dict[str, type] = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def available_providers(wanted: tuple[str, ...]) -> list[str]:
    """`wanted` in order, keeping those this onnxruntime build has; CPU is always last."""
    present = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in present and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


class OnnxTower:
    """One exported tower in an `onnxruntime.InferenceSession`.

    The graph has one input (batch first) and one output (N, dim); their names are read from
    the graph, so exporters may name them as they like.
    """

    def __init__(self, path: Path, config: RuntimeConfig, dim: int) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = config.intra_op_threads
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if config.spin else "0"
        )
        # Batches of one tower run one at a time per session; parallelism is within an op.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=available_providers(config.providers)
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: ONNX Runtime could not load it: {e}") from e
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"{path}: a tower needs exactly one input and one output, "
                f"got {len(inputs)} and {len(outputs)}"
            )
        self._input, self._output = inputs[0].name, outputs[0].name
        out_dim = outputs[0].shape[-1]
        if isinstance(out_dim, int) and out_dim != dim:
            raise ModelError(f"{path}: output has {out_dim} values, the manifest says {dim}")
        self.providers: list[str] = self._session.get_providers()
        log.info("loaded %s on %s", path, ", ".join(self.providers))

        self.device = "cuda" if self.providers[0] in _GPU_PROVIDERS else "cpu"
        self._dim = dim
        self._input_type = _NUMPY_TYPES.get(inputs[0].type, np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self._session.run([self._output], {self._input: batch})
        return np.asarray(out, dtype=np.float32)

    def run_device(self, x: torch.Tensor) -> torch.Tensor:
        """A torch tensor (N, ...) on this session's device → float32 (N, dim) on the same
        device, through IO binding: ONNX Runtime reads and writes the tensors' own memory, with
        no copy through the host. On CUDA the caller's stream is synchronised first (ONNX
        Runtime runs on its own stream) and the run returns when the output is written."""
        import torch

        x = x.to(torch.float32 if self._input_type is np.float32 else torch.int64).contiguous()
        out = torch.empty((len(x), self._dim), dtype=torch.float32, device=x.device)
        index = x.device.index or 0
        binding = self._session.io_binding()
        binding.bind_input(
            self._input, x.device.type, index, self._input_type, tuple(x.shape), x.data_ptr()
        )
        binding.bind_output(
            self._output, out.device.type, index, np.float32, tuple(out.shape), out.data_ptr()
        )
        if x.device.type == "cuda":
            torch.cuda.current_stream(x.device).synchronize()
        self._session.run_with_iobinding(binding)
        return out
