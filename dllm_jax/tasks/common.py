"""What the built-in puzzles share: the :class:`Puzzle` interface (a task that also generates
examples), the example record, the train/test split, the sampling loop and
the encoding of examples into fixed-shape id arrays."""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from dllm_jax.tasks.base import Item, Task, answer_block

Split = Literal["train", "test"]
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Example:
    """One task instance.

    Attributes:
      prompt: the prompt text (fixed length within a task).
      answer: the reference answer text (at most ``meta["answer_length"]`` characters; the
        encoded answer is padded with EOS to that length).
      meta: what the verifier needs (numbers, target, puzzle, ...) plus ``answer_length``.
    """

    prompt: str
    answer: str
    meta: dict[str, Any]


def fields_of(example: Example | Item) -> Item:
    """The fields a verifier reads: an example's ``meta``, or an item as it is."""
    return example.meta if isinstance(example, Example) else example


class Puzzle(Task):
    """A built-in synthetic task: exact-verifier puzzles generated on the fly.

    Two faces share one verifier. :meth:`generate` makes compact character-level
    :class:`Example` s (``prompt``, ``answer``) for the tiny models of the demo, scored by
    :meth:`verify` on the bare answer; the :class:`~dllm_jax.tasks.base.Task` methods give the
    same puzzles (generated ``meta`` or loaded records) a worded prompt in the
    ``<reasoning>``/``<answer>`` format, and :meth:`reward` applies :meth:`verify` to the answer
    the completion commits to.
    """

    @property
    @abc.abstractmethod
    def prompt_length(self) -> int:
        """Characters in every generated prompt."""

    @property
    @abc.abstractmethod
    def answer_length(self) -> int:
        """Answer width: generated answers have at most this many characters."""

    @abc.abstractmethod
    def generate(self, seed: int, n: int, split: str = "train") -> list[Example]:
        """``n`` distinct examples of ``split``, deterministic in ``(seed, split)``."""

    @abc.abstractmethod
    def verify(self, example: Example | Item, completion: str) -> float:
        """1.0 if the bare ``completion`` solves the example (or item), else 0.0."""

    @abc.abstractmethod
    def format_reward(self, completion: str) -> float:
        """1.0 if the bare ``completion`` has the answer's form (right or wrong)."""

    @abc.abstractmethod
    def solution(self, item: Example | Item) -> str:
        """A bare answer that :meth:`verify` accepts."""

    def rl_reward(self, example: Example | Item, completion: str) -> float:
        """The reward the RL program trains on for a bare ``completion``, in [0, 1]; by
        default :meth:`verify` (a task with a dense reward overrides it)."""
        return self.verify(example, completion)

    def reward(self, item: Item, completion: str) -> float:
        answer = self.answer_of(completion)
        return 0.0 if answer is None else self.verify(item, answer)

    def reference_completion(self, item: Item) -> str:
        return answer_block("Work it out.", self.solution(item))


def split_of(identity: str, test_fraction: float) -> Split:
    """``"test"`` for a stable hash-chosen ``test_fraction`` of identities, else ``"train"``.

    The split is a pure function of the puzzle identity (not of any seed), so a test example
    never appears in any training set.
    """
    h = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big")
    return "test" if h < test_fraction * 2.0**64 else "train"


def family_part(family: str, shares: dict[str, float]) -> str:
    """The part of a fixed family-level split that ``family`` (e.g. a puzzle's solution grid or
    its multiset of numbers) falls in: a stable hash of the family, cut at the cumulative
    ``shares`` (which sum to 1), so every instance of a family lies in one part."""
    u = int.from_bytes(hashlib.sha256(family.encode()).digest()[:8], "big") / 2.0**64
    edge = 0.0
    for name, share in shares.items():
        edge += share
        if u < edge:
            return name
    return name


def is_test_item(identity: str, test_fraction: float = 0.1) -> bool:
    """True if ``identity`` belongs to the test split (see :func:`split_of`)."""
    return split_of(identity, test_fraction) == "test"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


def sample_examples(draw: Callable[[np.random.Generator], tuple[str, Example]], *, seed: int,
                    n: int, split: str, test_fraction: float, name: str) -> list[Example]:
    """``n`` distinct examples of ``split`` from ``draw`` (which returns ``(identity, example)``).

    Deterministic in ``(seed, split)``; a shorter request is a prefix of a longer one.

    Raises:
      ValueError: bad ``n``/``split``, or the task has too few distinct instances for ``n``.
    """
    check_split(split)
    if not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, SPLITS.index(split), 0x7A5C])
    seen: set[str] = set()
    out: list[Example] = []
    frac = test_fraction if split == "test" else 1.0 - test_fraction
    budget = int(20 * n / frac) + 1000
    for _ in range(budget):
        if len(out) == n:
            break
        identity, ex = draw(rng)
        if identity in seen or split_of(identity, test_fraction) != split:
            continue
        seen.add(identity)
        out.append(ex)
    if len(out) < n:
        raise ValueError(f"{name}: could only draw {len(out)} distinct {split} examples of the "
                         f"{n} asked for; make the task larger or ask for fewer")
    return out


def encode_examples(tokenizer: Any, examples: Sequence[Example],
                    answer_length: int | None = None) -> dict[str, np.ndarray]:
    """Encodes examples into fixed-shape int32 arrays.

    Args:
      tokenizer: a :class:`~dllm_jax.data.chartok.CharTokenizer` (anything with ``encode`` and
        ``eos_id``).
      examples: examples of one task (equal prompt lengths).
      answer_length: answer width ``A``; defaults to the task's fixed width
        (``meta["answer_length"]``), else the longest answer.

    Returns:
      ``prompt_BP`` (prompt ids) and ``answer_BA`` (answer ids padded with EOS).

    Raises:
      ValueError: no examples, unequal prompt lengths, an answer longer than ``A``, or a
        character the tokenizer does not know.
    """
    if not examples:
        raise ValueError("encode_examples: no examples given")
    prompts = [tokenizer.encode(ex.prompt) for ex in examples]
    answers = [tokenizer.encode(ex.answer) for ex in examples]
    lengths = {len(p) for p in prompts}
    if len(lengths) != 1:
        raise ValueError(f"encode_examples: prompts have different lengths {sorted(lengths)}")
    if answer_length is None:
        fixed = [ex.meta.get("answer_length") for ex in examples]
        answer_length = max([len(a) for a in answers] + [int(f) for f in fixed if f is not None])
    answer_BA = np.full((len(examples), answer_length), tokenizer.eos_id, np.int32)
    for i, a in enumerate(answers):
        if len(a) > answer_length:
            raise ValueError(f"encode_examples: answer {examples[i].answer!r} is longer than "
                             f"answer_length={answer_length}")
        answer_BA[i, :len(a)] = a
    return {"prompt_BP": np.asarray(prompts, np.int32), "answer_BA": answer_BA}
