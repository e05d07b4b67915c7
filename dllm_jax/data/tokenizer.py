"""The one tokenizer loader and prompt rendering shared by every program.

``load_tokenizer`` reads a dllm-jax character tokenizer saved beside a checkpoint, else an HF
tokenizer from local files only: no remote code, no network, no interactive prompt, and a
missing tokenizer is one :class:`~dllm_jax.errors.ConfigError` line.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dllm_jax.data.chartok import CharTokenizer
from dllm_jax.errors import ConfigError

# A directory without any of these holds no HF tokenizer (a checkpoint saved without one).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt")


def load_tokenizer(path: str | Path) -> Any:
    """A dllm-jax character tokenizer saved with a checkpoint, else an HF tokenizer.

    The HF tokenizer comes from local files only (a directory, or a model name already in the
    local HF cache) and never runs a checkpoint's own code. Nothing reaches the console while
    transformers loads (see :func:`_console_closed`), so a ``--json`` stdout stays clean.

    Raises:
      ConfigError: one line: a directory without tokenizer files (e.g. a checkpoint saved
        without its tokenizer), or files transformers cannot build a tokenizer from.
    """
    path = Path(path)
    if CharTokenizer.is_saved_in(path):
        return CharTokenizer.load(path)
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"no tokenizer in {path}: none of {', '.join(TOKENIZER_FILES)}")
    from transformers import AutoTokenizer

    with _console_closed():
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                                 trust_remote_code=False)
        except (OSError, ValueError) as e:
            if not path.is_dir():
                raise ConfigError(f"no tokenizer at {path}: not a directory (nor a model name "
                                  f"in the local HF cache)") from None
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ConfigError(f"cannot load a tokenizer in {path}: {reason}") from None


@contextlib.contextmanager
def _console_closed() -> Iterator[None]:
    """Keeps transformers off the console: stdin reads as empty, so a question (some versions
    ask whether to run a checkpoint's own code) is answered at once instead of waiting for a
    key; what it prints goes to stderr; its warnings are hushed (a failure is one error line)."""
    from transformers.utils import logging as hf_logging

    stdin, verbosity = sys.stdin, hf_logging.get_verbosity()
    sys.stdin = io.StringIO()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdin = stdin
        hf_logging.set_verbosity(verbosity)


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
