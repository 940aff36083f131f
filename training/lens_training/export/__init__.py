"""Export encoders to ONNX model versions, checked for parity, into the model repository."""

from lens_training.export.parity import ParityError

__all__ = ["ParityError"]
