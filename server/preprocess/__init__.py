"""Turning request inputs into tower inputs, exactly as the model's manifest says."""

from server.preprocess.image import ImagePreprocessor
from server.preprocess.text import TextTokenizer

__all__ = ["ImagePreprocessor", "TextTokenizer"]
