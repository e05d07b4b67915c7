"""Multi-digit addition: ``aaa+bbb=`` -> the sum, least-significant digit first.

With ``digits=3``: prompt ``"047+985="`` (8 characters), answer ``"2301"`` (1032 written
backwards, always ``digits + 1`` characters). Writing the sum backwards lets a left-to-right
reader carry; a diffusion model may fill the digits in any order. Addition has no data files:
its examples are only generated.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from dllm_jax.tasks.base import FORMAT_TAIL, Item
from dllm_jax.tasks.common import Example, Puzzle, check_fraction, fields_of, sample_examples

PROMPT = ("Compute {a} + {b}. Write the sum as exactly {width} digits (with leading zeros), "
          "reversed so that the least significant digit comes first.\n"
          + FORMAT_TAIL.format(answer="the reversed digits"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Addition(Puzzle):
    """Addition of two ``digits``-digit numbers (leading zeros written).

    Attributes:
      digits: digits per operand (1..9).
      test_fraction: share of unordered operand pairs reserved for the test split.
    """

    name: ClassVar[str] = "addition"
    data: ClassVar[None] = None
    digits: int = 3
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.digits, int) or not 1 <= self.digits <= 9:
            raise ValueError(f"addition.digits must be an int in 1..9, got {self.digits!r}")
        check_fraction(self.test_fraction)

    @property
    def prompt_length(self) -> int:
        return 2 * self.digits + 2

    @property
    def answer_length(self) -> int:
        return self.digits + 1

    def make(self, a: int, b: int) -> Example:
        """The example for ``a + b``."""
        d = self.digits
        if not (0 <= a < 10**d and 0 <= b < 10**d):
            raise ValueError(f"addition operands must be in [0, {10**d}), got {a}, {b}")
        answer = str(a + b).zfill(d + 1)[::-1]
        return Example(prompt=f"{a:0{d}d}+{b:0{d}d}=", answer=answer,
                       meta={"a": a, "b": b, "answer_length": d + 1})

    def generate(self, seed: int, n: int, split: str = "train") -> list[Example]:
        """``n`` distinct examples of ``split``; train and test never share a pair {a, b}."""
        hi = 10**self.digits

        def draw(rng: np.random.Generator) -> tuple[str, Example]:
            a, b = (int(x) for x in rng.integers(0, hi, size=2))
            return f"{min(a, b)}+{max(a, b)}", self.make(a, b)

        return sample_examples(draw, seed=seed, n=n, split=split,
                               test_fraction=self.test_fraction, name=self.name)

    def verify(self, example: Example | Item, completion: str) -> float:
        """1.0 if ``completion`` (surrounding whitespace ignored) is the reversed sum, else 0.0."""
        try:
            want = self.solution(example)
        except (KeyError, TypeError, ValueError):
            return 0.0
        return 1.0 if isinstance(completion, str) and completion.strip() == want else 0.0

    def solution(self, item: Example | Item) -> str:
        """The reversed, zero-padded sum of ``item``'s ``a`` and ``b``."""
        meta = fields_of(item)
        return str(int(meta["a"]) + int(meta["b"])).zfill(self.digits + 1)[::-1]

    def prompt_text(self, item: Item) -> str:
        meta = fields_of(item)
        return PROMPT.format(a=meta["a"], b=meta["b"], width=self.answer_length)

    def format_reward(self, completion: str) -> float:
        """1.0 if ``completion`` is exactly ``digits + 1`` decimal digits."""
        if not isinstance(completion, str):
            return 0.0
        c = completion.strip()
        ok = len(c) == self.digits + 1 and all(ch in "0123456789" for ch in c)
        return 1.0 if ok else 0.0
