"""int8 towers: ONNX Runtime's static quantization of an exported fp32 graph, checked against it.

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized node, which ONNX
Runtime fuses into integer kernels on load): uint8 activations with ranges calibrated on real
inputs (MinMax), int8 weights per output channel in a 7-bit range (`reduce_range`). The 7 bits
are for CPUs without VNNI: there ONNX Runtime's uint8×int8 kernel (AVX2 `vpmaddubsw`) adds
pairs of products in int16 and saturates; measured on the tiny CLIP on an AVX2-only CPU, full
8-bit weights reach min cosine 0.9889 (image) and 0.9754 (text) to fp32, 7-bit ones 0.99991 and
0.9981. An export does not know the CPU that will serve it, so every export takes 7 bits. Only
the linear layers are quantized (`MatMul`, `Gemm`, `Conv`: the patch embedding, attention's
Q/K/V and output projections, the MLPs); LayerNorm, GELU, the ONNX `Attention` op (its softmax
and batched products) and the final projection into the embedding space stay fp32. Measured on
the tiny CLIP: quantizing `Attention` too quantizes its mask and drives text cosine to -0.26.
Keeping one linear node fp32 at a time (models/README.md gives the figures), the final
projection is the image tower's most sensitive node; the text tower's is its first linear node,
but every tower is far above its gate with only the final projection kept, so that is the rule.

Parity is the cosine similarity of each int8 tower's embeddings to the fp32 tower's on the
export's parity set (lens preprocessing and ONNX Runtime on both sides, as the server runs
them); a tower below its gate raises ParityError and nothing is written. The gate is 0.99 for
trained weights and 0.98 for random ones (whose activations are not those of trained weights).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lens_server.vectors import cosine_rows
from lens_training.export.calibration import CalibrationSet
from lens_training.export.parity import ParityError

SCHEMES = ("int8",)
GATE_TRAINED = 0.99
GATE_RANDOM = 0.98
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
# Rows per calibration batch: the calibrator keeps every intermediate tensor of a batch.
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class Quantize:
    """How to quantize a version's towers.

    `scheme`: one of SCHEMES. `calibration`: the inputs activation ranges are measured on
    (None: the exporter's training data where it has them, else `calibration.samples()`).
    `gate`: the lowest cosine to the fp32 tower accepted; None takes GATE_TRAINED, or
    GATE_RANDOM for random weights (the exporter knows which).
    """

    scheme: str
    calibration: CalibrationSet | None = None
    gate: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(
                f"unknown quantization scheme {self.scheme!r}: use {', '.join(SCHEMES)}"
            )
        if self.gate is not None and not 0.0 < self.gate <= 1.0:
            raise ValueError(f"the parity gate must be in (0, 1], got {self.gate}")

    def gate_for(self, random_weights: bool) -> float:
        if self.gate is not None:
            return self.gate
        return GATE_RANDOM if random_weights else GATE_TRAINED

    def record(self, kept: dict[str, list[str]]) -> dict[str, Any]:
        """The manifest's `quantization` entry; `kept`: the linear nodes left fp32 per tower."""
        return {
            "scheme": self.scheme,
            "method": "onnxruntime static, QDQ, MinMax calibration",
            "activations": "uint8, per tensor",
            "weights": "int8 in a 7-bit range, per channel",
            "quantized_ops": list(QUANTIZED_OPS),
            "calibration": self.calibration.describe() if self.calibration else {},
            "fp32_nodes": kept,
            "fp32_ops": ["Attention", "LayerNormalization", "Gelu", "Softmax"],
            "gate": self.gate,
        }


def int8_file(fp32_file: str) -> str:
    """`image.onnx` → `image.int8.onnx`."""
    stem = fp32_file.removesuffix(".onnx")
    return f"{stem}.int8.onnx"


def final_projection(graph: Any) -> list[str]:
    """The last linear node of the graph (in its topological order): the projection into the
    embedding space, kept fp32."""
    linear = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    return linear[-1:]


def quantize_tower(
    fp32: Path,
    int8: Path,
    calibration: np.ndarray,
    keep_fp32: Callable[[Any], list[str]] = final_projection,
) -> list[str]:
    """Writes `fp32` statically quantized to `int8`, calibrated on `calibration` (tower
    inputs, (N, ...)); returns the names of the linear nodes left in fp32."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load(str(fp32))
    kept = keep_fp32(model.graph)
    reader = _reader(model.graph.input[0].name, calibration)
    # The quantizer logs a "consider pre-processing" warning per call on the root logger.
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR
    try:
        quantize_static(
            str(fp32),
            str(int8),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=kept,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
        )
    finally:
        root.level = level
    return kept


def _reader(name: str, inputs: np.ndarray) -> Any:
    """A `CalibrationDataReader` over an array of tower inputs, CALIBRATION_BATCH rows a feed."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(
                {name: inputs[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(inputs), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    return Batches()


def check_int8(
    tower: str,
    inputs: Sequence[Any],
    fp32: Callable[[Sequence[Any]], np.ndarray],
    int8: Callable[[Sequence[Any]], np.ndarray],
    gate: float,
) -> dict[str, Any]:
    """Embeds `inputs` with both towers; the parity figures, or ParityError naming them."""
    cosines = cosine_rows(
        np.asarray(fp32(inputs), np.float64), np.asarray(int8(inputs), np.float64)
    )
    worst = int(np.argmin(cosines))
    figures = {
        "min_cosine": float(cosines[worst]),
        "mean_cosine": float(cosines.mean()),
        "inputs": len(inputs),
        "threshold": gate,
        "reference": "fp32",
    }
    if cosines[worst] < gate:
        raise ParityError(
            f"{tower} tower int8: cosine similarity {cosines[worst]:.6f} to the fp32 tower on "
            f"sample {worst} is below the gate {gate} (mean {cosines.mean():.6f}, "
            f"{len(inputs)} inputs); not written"
        )
    return figures
