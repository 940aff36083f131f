"""open_clip's `SimpleTokenizer` as a `tokenizers` JSON file the server can load without torch.

The BPE vocabulary and merges are read from the tokenizer object itself; the pre-tokenizer
splits with open_clip's regular expression and maps bytes to unicode like GPT-2 (as open_clip
does). Cleaning (ftfy, HTML, whitespace, lower case) is done by the server before
tokenization, as the manifest's `text.clean = "openclip"` says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers


def from_openclip(tokenizer: Any, path: Path) -> None:
    """Writes `tokenizer` (an `open_clip.tokenizer.SimpleTokenizer`) to `path`."""
    from open_clip.tokenizer import SimpleTokenizer

    if not isinstance(tokenizer, SimpleTokenizer):
        raise ValueError(
            f"only open_clip's SimpleTokenizer (CLIP BPE) can be exported, not "
            f"{type(tokenizer).__name__}"
        )
    if getattr(tokenizer, "reduction_fn", None) is not None:
        raise ValueError("open_clip tokenizers with a reduction mask are not supported")
    clean = getattr(tokenizer.clean_fn, "__name__", "")
    if clean not in ("_clean_lower", ""):
        raise ValueError(f"open_clip tokenizer cleaning {clean!r} is not supported (only 'lower')")
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.__getitem__)
    bpe = models.BPE(vocab=dict(tokenizer.encoder), merges=list(merges), end_of_word_suffix="</w>")
    result = Tokenizer(bpe)
    result.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tokenizer.pat.pattern), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    result.decoder = decoders.ByteLevel()
    # open_clip recognises its special tokens inside texts too (its BPE cache holds them).
    specials = [t for t, i in tokenizer.encoder.items() if i >= len(merges) + 512]
    result.add_special_tokens(specials)
    result.save(str(path))
