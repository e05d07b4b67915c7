"""lm-eval requests to token ids and back: encoding, stop strings, per-request keys.

The rules are those of LLaDA's lm-evaluation-harness adapter (docs/eval.md): text is encoded
the way its tokenizer call does (``tokenizer(text)["input_ids"]``, special tokens included); a
context/continuation pair follows lm-eval's convention (the context's trailing whitespace
moves into the continuation, whose ids are what the whole text has after the context's); a
completion is decoded with its special tokens, cut at the first stop string, then has the
special tokens removed. The character tokenizer (``data/chartok.py``) takes the same path
with its own spelling of special tokens.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from dllm_jax.data.chartok import CharTokenizer
from dllm_jax.data.tokenizer import encode_plain, special_id


class Codec:
    """One tokenizer seen through the calls the adapter makes.

    Attributes:
      tokenizer: an HF tokenizer or a :class:`CharTokenizer`.
      prefix_id: the id a request with an empty context is conditioned on (BOS, else EOS).
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._char = isinstance(tokenizer, CharTokenizer)
        prefix = special_id(tokenizer, "bos")
        self.prefix_id = prefix if prefix is not None else special_id(tokenizer, "eos")

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as the tokenizer's own call gives them (HF: with BOS if it adds
        one)."""
        if self._char:
            return list(self.tokenizer.encode(text))
        return list(self.tokenizer(text)["input_ids"])

    def encode_plain(self, text: str) -> list[int]:
        return encode_plain(self.tokenizer, text)

    def decode_raw(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with the special tokens written out."""
        return self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=False)

    def strip_special(self, text: str) -> str:
        """``text`` without special tokens: HF re-encodes and decodes skipping them, as
        LLaDA's adapter does; the character tokenizer drops the markers it writes."""
        if self._char:
            for marker in ("<eos>", "<bos>"):
                text = text.replace(marker, "")
            return text
        return self.tokenizer.decode(self.encode(text), skip_special_tokens=True)


def encode_pair(codec: Codec, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` by lm-eval's convention; an empty context becomes
    the prefix token."""
    if context == "":
        if codec.prefix_id is None:
            raise ValueError("an empty context needs a BOS or EOS token, and the tokenizer has "
                             "neither")
        return [codec.prefix_id], codec.encode_plain(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = codec.encode(context + continuation)
    ctx = codec.encode(context)
    return ctx, whole[len(ctx):]


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` cut before each stop string in turn, as LLaDA's adapter loops: the text before
    the earliest occurrence of any of them, unless two stop strings overlap across a cut."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop)[0]
    return text


def as_stop_list(until: Any) -> list[str]:
    """lm-eval's ``until`` (a string, a list of strings or absent) as a list."""
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if not isinstance(until, (list, tuple)) or not all(isinstance(s, str) for s in until):
        raise ValueError(f"generation_kwargs until must be a string or a list of strings, "
                         f"got {until!r}")
    return list(until)


def request_keys(seed: int, rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Raw PRNG keys ``uint32 [N, 2]``, one per request: ``fold_in(fold_in(PRNGKey(seed),
    crc32(ids) & 0x7fffffff), j)`` with ``ids`` the request's token ids (int32 bytes) and
    ``j`` how many earlier requests of the list had the same ids. A request's draws depend on
    the seed and its own tokens only, not on its batch or order; repeats draw afresh."""
    base = jax.random.PRNGKey(seed)
    seen: dict[bytes, int] = {}
    out = np.zeros((len(rows), 2), np.uint32)
    for i, ids in enumerate(rows):
        raw = np.asarray(ids, np.int32).tobytes()
        j = seen.get(raw, 0)
        seen[raw] = j + 1
        key = jax.random.fold_in(jax.random.fold_in(base, zlib.crc32(raw) & 0x7FFFFFFF), j)
        out[i] = np.asarray(key)
    return out
