"""A character-level tokenizer for the built-in tasks (no download, saved beside checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

from dllm_jax.config import ModelConfig

DEFAULT_CHARS = "0123456789+-*/=(),>? abcdefghijklmnopqrstuvwxyz"
FILE_NAME = "char_tokenizer.json"


class CharTokenizer:
    """Ids: 0 BOS, 1 EOS (also padding), 2.. the characters, then MASK last.

    ``decode`` stops at the first EOS and drops BOS; MASK renders as ``_``.
    """

    def __init__(self, chars: str = DEFAULT_CHARS):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer characters must be unique")
        self.chars = chars
        self.bos_id, self.eos_id = 0, 1
        self.pad_id = self.eos_id
        self._ids = {c: i + 2 for i, c in enumerate(chars)}
        self.mask_id = len(chars) + 2
        self.vocab_size = len(chars) + 3
        self.chat_template = None

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary "
                             f"{self.chars!r}") from None

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i == self.bos_id:
                continue
            if i == self.mask_id:
                out.append("_")
            elif 2 <= i < self.mask_id:
                out.append(self.chars[i - 2])
        return "".join(out)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"chars": self.chars}))
        return path

    @classmethod
    def is_saved_in(cls, directory: str | Path) -> bool:
        return (Path(directory) / FILE_NAME).is_file()

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        path = Path(directory) / FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {FILE_NAME} in {directory}")
        return cls(json.loads(path.read_text())["chars"])


def model_config(tok: CharTokenizer, *, hidden_size: int = 128, num_layers: int = 4,
                 num_heads: int = 4, intermediate_size: int | None = None,
                 max_position_embeddings: int = 512) -> ModelConfig:
    """A LLaDA-family config sized for the tokenizer (vocab rounded up to a multiple of 8)."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    return ModelConfig(
        family="llada", vocab_size=-(-tok.vocab_size // 8) * 8, hidden_size=hidden_size,
        num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_heads,
        head_dim=hidden_size // num_heads,
        intermediate_size=intermediate_size or (hidden_size * 8 // 3 + 7) // 8 * 8,
        rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=max_position_embeddings,
        mask_token_id=tok.mask_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
        bos_token_id=tok.bos_id)
