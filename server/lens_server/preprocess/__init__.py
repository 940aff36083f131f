"""Turning request inputs into tower inputs, exactly as the model's manifest says."""

from lens_server.preprocess.image import ImagePreprocessor
from lens_server.preprocess.text import TextTokenizer

__all__ = ["ImagePreprocessor", "TextTokenizer"]
