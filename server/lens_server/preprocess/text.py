"""Text tokenization with the `tokenizers` library (no torch).

With `clean = "openclip"` the text is cleaned as open_clip's `SimpleTokenizer` cleans it
(ftfy, HTML unescaping twice, whitespace folding, lower case) and split by a BPE tokenizer
built from the same vocabulary and merges, so the ids equal open_clip's.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import ftfy
import numpy as np
from tokenizers import Encoding, Tokenizer

from lens_server.repository.manifest import TextSpec

_SPACES = re.compile(r"\s+")
# Printable ASCII without "&": text that ftfy and HTML unescaping leave as it is (both act only
# on other characters or on entities), so the cleaning skips them; most queries are such text,
# and ftfy is most of a text's cost before the model.
_PLAIN = re.compile(r"[ -%'-~]*")


def clean_openclip(text: str) -> str:
    """open_clip's `_clean_lower`: basic_clean, whitespace_clean, lower."""
    if not _PLAIN.fullmatch(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _SPACES.sub(" ", text).strip().lower()


class TextTokenizer:
    """Strings → int64 (N, context_length) token ids, as the manifest's `TextSpec` says."""

    def __init__(self, spec: TextSpec, tokenizer_file: Path) -> None:
        self.spec = spec
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))

    def __call__(self, texts: list[str]) -> np.ndarray:
        spec = self.spec
        encodings = self._encode(texts)
        ids = np.full((len(texts), spec.context_length), spec.pad_id, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            tokens = [spec.sot_id, *encoding.ids, spec.eot_id]
            if len(tokens) > spec.context_length:
                tokens = tokens[: spec.context_length]
                tokens[-1] = spec.eot_id
            ids[row, : len(tokens)] = tokens
        return ids

    def lengths(self, texts: list[str]) -> list[int]:
        """Tokens each text takes in the model (start and end tokens included, truncated at
        the context length)."""
        limit = self.spec.context_length
        return [min(len(e.ids) + 2, limit) for e in self._encode(texts)]

    def _encode(self, texts: list[str]) -> list[Encoding]:
        if self.spec.clean == "openclip":
            texts = [clean_openclip(t) for t in texts]
        return self._tokenizer.encode_batch(texts, add_special_tokens=False)
