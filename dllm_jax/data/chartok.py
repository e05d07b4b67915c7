"""A character-level tokenizer for the built-in tasks, and a small model config sized to it.

Ids: ``0`` BOS, ``1`` EOS (also PAD), then one id per character, then MASK last. The
vocabulary is fixed by the character string, which :meth:`CharTokenizer.save` writes next to a
checkpoint so the checkpoint can be decoded without this code's defaults.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dllm_jax.model.config import ModelConfig

DEFAULT_CHARS = "0123456789+-*/=()<>,.:;?! " + string.ascii_lowercase
FILENAME = "char_tokenizer.json"
FILE_NAME = FILENAME
MASK_CHAR = "_"  # how decode() shows a still-masked position
UNKNOWN_CHAR = "\ufffd"  # how decode() shows an id outside the vocabulary (e.g. a padding row)


class CharTokenizer:
    """Maps single characters to ids and back.

    Attributes:
      chars: the ordinary characters, in id order (ids ``2 .. 2 + len(chars) - 1``).
      bos_id, eos_id, pad_id (== eos_id), mask_id: special ids.
      vocab_size: number of ids (``len(chars) + 3``).
    """

    bos_id = 0
    eos_id = 1
    pad_id = 1
    chat_template = None  # so code written for HF tokenizers skips chat rendering

    def __init__(self, chars: str = DEFAULT_CHARS):
        if not isinstance(chars, str) or not chars:
            raise ValueError("CharTokenizer needs a non-empty string of characters")
        dup = sorted({c for c in chars if chars.count(c) > 1})
        if dup:
            raise ValueError(f"CharTokenizer characters repeat: {dup}")
        if MASK_CHAR in chars or UNKNOWN_CHAR in chars:
            raise ValueError(
                f"CharTokenizer characters may not include {MASK_CHAR!r} or {UNKNOWN_CHAR!r} "
                "(decode uses them for MASK and out-of-vocabulary ids)")
        self.chars = chars
        self._to_id = {c: i + 2 for i, c in enumerate(chars)}
        self.mask_id = len(chars) + 2
        self.vocab_size = len(chars) + 3

    def __len__(self) -> int:
        return self.vocab_size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={self.chars!r})"

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text``, one per character.

        Raises:
          ValueError: a character outside the vocabulary (named with its position).
        """
        if not isinstance(text, str):
            raise ValueError(f"CharTokenizer.encode expects a str, got {type(text).__name__}")
        ids = [self.bos_id] if add_bos else []
        for i, ch in enumerate(text):
            tid = self._to_id.get(ch)
            if tid is None:
                raise ValueError(
                    f"character {ch!r} at position {i} of {text!r} is not in the tokenizer's "
                    f"vocabulary {self.chars!r}")
            ids.append(tid)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``: stops at the first EOS/PAD, drops BOS, shows MASK as ``_``.

        Never raises on model output: ids outside the vocabulary (the padding rows of a model
        whose vocabulary was rounded up) are shown as U+FFFD, which no verifier accepts.
        With ``skip_special_tokens=False`` BOS/EOS are written as ``<bos>``/``<eos>`` and
        decoding runs to the end (for inspecting raw sequences).
        """
        out = []
        for tid in np.asarray(ids).reshape(-1).tolist():
            tid = int(tid)
            if tid in (self.eos_id, self.bos_id) and not skip_special_tokens:
                out.append("<eos>" if tid == self.eos_id else "<bos>")
                continue
            if tid == self.eos_id:
                break
            if tid == self.bos_id:
                continue
            if tid == self.mask_id:
                out.append(MASK_CHAR)
            elif 2 <= tid < self.mask_id:
                out.append(self.chars[tid - 2])
            else:
                out.append(UNKNOWN_CHAR)
        return "".join(out)

    def decode_batch(self, ids_BL: np.ndarray) -> list[str]:
        """:meth:`decode` of each row of a ``[B, L]`` array."""
        return [self.decode(row) for row in np.asarray(ids_BL)]

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {"type": "CharTokenizer", "version": 1, "chars": self.chars,
                "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id,
                "mask_id": self.mask_id, "vocab_size": self.vocab_size}

    def save(self, directory: str | Path) -> Path:
        """Writes ``directory/char_tokenizer.json`` (creating the directory); returns its path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / FILENAME
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def is_saved_in(cls, directory: str | Path) -> bool:
        """True if ``directory`` holds a saved CharTokenizer."""
        return (Path(directory) / FILENAME).is_file()

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """Reads a tokenizer saved by :meth:`save` (a directory or the JSON file itself).

        Raises:
          FileNotFoundError: no ``char_tokenizer.json`` there.
          ValueError: the file is not a CharTokenizer description or its ids disagree.
        """
        p = Path(path)
        if p.is_dir():
            p = p / FILENAME
        if not p.is_file():
            raise FileNotFoundError(f"no {FILENAME} at {path}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not JSON ({e})") from None
        # Files from the first version of this class hold only ``chars``; accept them.
        if not isinstance(data, dict) or data.get("type", "CharTokenizer") != "CharTokenizer" \
                or not isinstance(data.get("chars"), str):
            raise ValueError(f"{p}: not a CharTokenizer description")
        tok = cls(data["chars"])
        for key in ("bos_id", "eos_id", "pad_id", "mask_id", "vocab_size"):
            if key in data and data[key] != getattr(tok, key):
                raise ValueError(f"{p}: {key}={data[key]} disagrees with the characters "
                                 f"(expected {getattr(tok, key)})")
        return tok


def model_config(tokenizer: CharTokenizer, *, hidden_size: int = 128, num_layers: int = 4,
                 num_heads: int = 4, intermediate_size: int | None = None,
                 max_position_embeddings: int = 256, **overrides: Any) -> ModelConfig:
    """A small LLaDA-family config whose ids come from ``tokenizer``.

    The vocabulary is rounded up to a multiple of 8 (the extra rows are never targets);
    ``head_dim = hidden_size // num_heads``; ``intermediate_size`` defaults to
    ``4 * hidden_size``. ``overrides`` go to :class:`ModelConfig` as they are.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads "
                         f"({num_heads})")
    vocab = -(-tokenizer.vocab_size // 8) * 8
    kw: dict[str, Any] = dict(
        family="llada", vocab_size=vocab, hidden_size=hidden_size, num_layers=num_layers,
        num_heads=num_heads, num_kv_heads=num_heads, head_dim=hidden_size // num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position_embeddings, mask_token_id=tokenizer.mask_id,
        eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id)
    kw.update(overrides)
    return ModelConfig(**kw)
