"""The one tokenizer loader and prompt rendering shared by every program.

``load_tokenizer`` reads a dllm-jax character tokenizer saved beside a checkpoint, else an HF
tokenizer from local files only: no remote code, no network, no interactive prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dllm_jax.data.chartok import CharTokenizer
from dllm_jax.errors import ConfigError


def load_tokenizer(path: str | Path) -> Any:
    """A dllm-jax character tokenizer saved with a checkpoint, else an HF tokenizer."""
    path = Path(path)
    if CharTokenizer.is_saved_in(path):
        return CharTokenizer.load(path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                             trust_remote_code=False)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"no tokenizer found in {path}: {first}") from None


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Ids of ``text`` with no special tokens added (an answer must not get a BOS)."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # not an HF tokenizer (e.g. the character tokenizer)
        return list(tokenizer.encode(text))


def render_prompt(tokenizer: Any, text: str, chat_template: bool = True,
                  system_prompt: str | None = None) -> list[int]:
    """Token ids of a user prompt, through the chat template when the tokenizer has one.

    With a template: ``apply_chat_template([system?, user], add_generation_prompt=True)``;
    without: ``tokenizer.encode(text)`` with the tokenizer's own special tokens (BOS).
    """
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    if system_prompt:
        text = f"{system_prompt}\n\n{text}"
    return list(tokenizer.encode(text))


def special_id(tokenizer: Any, name: str) -> int | None:
    for attr in (f"{name}_token_id", f"{name}_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return None
