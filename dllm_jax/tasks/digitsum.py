"""Digit sum, the RL sanity task: ``"3814="`` -> any 4 digits that sum to 3 + 8 + 1 + 4 = 16.

Many answers are right (``"9700"``, ``"4444"``, the prompt itself), so the task has no labels
to imitate: a policy learns it only from its reward. The reward is dense so that a model
trained from scratch gets a signal at its first step: half of it is the share of the 4 answer
positions that hold a digit, the other half, once all 4 are digits, is
``1 - |sum(answer) - target| / 36``. :meth:`DigitSum.verify` is the exact check (4 digits with
the right sum); :meth:`DigitSum.solution` is one right answer (used by SFT only in tests).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from dllm_jax.tasks.base import FORMAT_TAIL, Item
from dllm_jax.tasks.common import Example, Puzzle, check_fraction, fields_of, sample_examples

WIDTH = 4  # digits in the prompt and in the answer
MAX_SUM = 9 * WIDTH
PROMPT = ("Write {width} digits whose sum equals the sum of the digits of {digits}.\n"
          + FORMAT_TAIL.format(answer="the digits"))


def target_of(digits: str) -> int:
    """The sum of the digits of ``digits``."""
    return sum(int(c) for c in digits)


def _target_and_answer(example: Example | Item, completion: str) -> tuple[int | None, str]:
    """The example's target sum (None for a malformed example) and the stripped completion."""
    try:
        target = target_of(str(fields_of(example)["digits"]))
    except (KeyError, TypeError, ValueError):
        target = None
    return target, completion.strip() if isinstance(completion, str) else ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DigitSum(Puzzle):
    """Answer with 4 digits summing to the prompt's digit sum (prompts: 4 random digits).

    Attributes:
      test_fraction: share of prompts reserved for the test split.
    """

    name: ClassVar[str] = "digitsum"
    data: ClassVar[None] = None
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_fraction(self.test_fraction)

    @property
    def prompt_length(self) -> int:
        return WIDTH + 1

    @property
    def answer_length(self) -> int:
        return WIDTH

    def make(self, digits: str) -> Example:
        if len(digits) != WIDTH or not digits.isdigit():
            raise ValueError(f"digitsum needs {WIDTH} digits, got {digits!r}")
        ex = Example(prompt=digits + "=", answer="", meta={"digits": digits,
                                                           "answer_length": WIDTH})
        return dataclasses.replace(ex, answer=self.solution(ex))

    def generate(self, seed: int, n: int, split: str = "train") -> list[Example]:
        """``n`` distinct prompts of ``split``; train and test never share a prompt."""

        def draw(rng: np.random.Generator) -> tuple[str, Example]:
            digits = "".join(str(d) for d in rng.integers(0, 10, size=WIDTH))
            return digits, self.make(digits)

        return sample_examples(draw, seed=seed, n=n, split=split,
                               test_fraction=self.test_fraction, name=self.name)

    def solution(self, item: Example | Item) -> str:
        """The largest digits first: 16 -> ``"9700"``."""
        left, out = target_of(str(fields_of(item)["digits"])), []
        for _ in range(WIDTH):
            d = min(9, left)
            out.append(str(d))
            left -= d
        return "".join(out)

    def verify(self, example: Example | Item, completion: str) -> float:
        """1.0 if ``completion`` (whitespace stripped) is 4 digits with the target sum."""
        target, c = _target_and_answer(example, completion)
        return 1.0 if target is not None and self.format_reward(c) and target_of(c) == target \
            else 0.0

    def rl_reward(self, example: Example | Item, completion: str) -> float:
        """The dense reward in [0, 1] (see the module docstring); 1.0 exactly when solved."""
        target, c = _target_and_answer(example, completion)
        if target is None:
            return 0.0
        share = sum(ch.isdigit() for ch in c[:WIDTH]) / WIDTH
        if not self.format_reward(c):
            return 0.5 * share
        return 0.5 + 0.5 * (1.0 - abs(target_of(c) - target) / MAX_SUM)

    def prompt_text(self, item: Item) -> str:
        return PROMPT.format(width=WIDTH, digits=fields_of(item)["digits"])

    def format_reward(self, completion: str) -> float:
        """1.0 if ``completion`` is exactly 4 decimal digits."""
        c = completion.strip() if isinstance(completion, str) else ""
        return 1.0 if len(c) == WIDTH and all(ch in "0123456789" for ch in c) else 0.0
