"""Token text for the trajectory plot and viewer: which ids were generated, and how one token
reads on screen."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

import numpy as np

from dllm_jax.errors import ConfigError

# ``tokenizer.decode``: a list of ids to its text (HF tokenizers and CharTokenizer alike).
Decode = Callable[[Sequence[int]], str]

_VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def generated_ids(tokens: np.ndarray, gen_length: int) -> np.ndarray:
    """The last ``gen_length`` columns of ``tokens`` ``[B, L]`` (the generated positions), so
    ``sequences [B, P + G]`` and completions ``[B, G]`` are both accepted."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < gen_length:
        raise ConfigError(f"tokens has shape {tokens.shape}; expected [B, L] with L >= "
                          f"{gen_length} generated positions")
    return tokens[:, tokens.shape[1] - gen_length:]


def token_texts(ids: Sequence[int] | np.ndarray, decode: Decode | None) -> list[str]:
    """How each id reads on screen: ``decode([id])`` (the id itself without a decoder) with
    line breaks, tabs and other control characters made visible and ``∅`` for empty text."""
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
        text = str(i) if decode is None else decode([int(i)])
        out.append(visible(text))
    return out


def visible(text: str) -> str:
    """``text`` with control characters shown as glyphs or ``\\xNN``; ``∅`` when empty."""
    if not text:
        return "∅"
    return "".join(_VISIBLE.get(c) or (f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc"
                                      else c) for c in text)
