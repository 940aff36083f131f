"""Runtimes run one tower of a model version on a batch: (N, ...) in, (N, dim) out."""

from lens_server.runtime.base import DeviceTower, Tower
from lens_server.runtime.onnx import OnnxTower, available_providers

__all__ = ["DeviceTower", "OnnxTower", "Tower", "available_providers"]
