"""Shared pieces of the built-in tasks: examples, deterministic splits, encoding."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Example:
    """One puzzle: the prompt text, the reference answer text and what the verifier needs."""

    prompt: str
    answer: str
    meta: dict[str, Any]


def is_test_item(identity: str, test_fraction: float = 0.1) -> bool:
    """Hash-based split: an item's split depends only on its identity, so train and test are
    disjoint for every seed."""
    h = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "little")
    return (h % 10_000) < test_fraction * 10_000


def sample_split(draw: Callable[[np.random.Generator], Example], seed: int, n: int, split: str,
                 max_tries: int = 200) -> list[Example]:
    """``n`` distinct examples of ``split`` (``train`` | ``test``), deterministic in the seed."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    out, seen, tries = [], set(), 0
    while len(out) < n:
        ex = draw(rng)
        tries += 1
        if tries > max_tries * max(n, 1):
            raise ValueError(f"could not draw {n} distinct {split} examples")
        if ex.prompt in seen or is_test_item(ex.prompt) != (split == "test"):
            continue
        seen.add(ex.prompt)
        out.append(ex)
    return out


def encode_examples(tok, examples: Sequence[Example], answer_length: int | None = None
                    ) -> dict[str, np.ndarray]:
    """``prompt_BP`` and ``answer_BA`` int32 arrays; answers right-padded with EOS to
    ``answer_length`` (default: the longest; built-in tasks have fixed prompt lengths)."""
    prompts = [tok.encode(e.prompt) for e in examples]
    answers = [tok.encode(e.answer) for e in examples]
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("examples have prompts of different lengths")
    width = answer_length or max(len(a) for a in answers)
    if max(len(a) for a in answers) > width:
        raise ValueError(f"an answer is longer than answer_length {width}")
    ans = np.full((len(answers), width), tok.eos_id, np.int32)
    for i, a in enumerate(answers):
        ans[i, :len(a)] = a
    return {"prompt_BP": np.asarray(prompts, np.int32), "answer_BA": ans}
