"""Math benchmarks with one final answer: GSM8K, and MATH-style problems (MATH500, AIME).

The prompts are ours, in the style of d1: step-by-step reasoning, then the final answer in a
``<reasoning>`` / ``<answer>`` format with a ``\\boxed{}`` answer. Scoring is
:func:`~dllm_jax.tasks.answers.gsm8k_reward` / :func:`~dllm_jax.tasks.answers.math_reward`.
"""

from __future__ import annotations

import dataclasses

from dllm_jax.tasks.answers import (
    extract_final_answer,
    extract_hash_answer,
    gsm8k_reward,
    math_reward,
    warm_up_math_verify,
)
from dllm_jax.tasks.base import FORMAT_TAIL, DataFiles, Item, Task, answer_block

SYSTEM_PROMPT = ("You are a careful mathematician. Work through the problem below step by "
                 "step, then state the final answer inside \\boxed{}.\n"
                 + FORMAT_TAIL.format(answer="\\boxed{final answer}"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GSM8K(Task):
    """Grade-school word problems: ``question``, and ``answer`` ending in ``#### <number>``."""

    name: str = "gsm8k"
    data: DataFiles = DataFiles(files=("gsm8k_test.jsonl", "gsm8k.jsonl"),
                                required=("question", "answer"),
                                hf=("openai/gsm8k", "main", "test"))

    def prompt_text(self, item: Item) -> str:
        return f"{SYSTEM_PROMPT}\n\n{item['question']}"

    def gold_answer(self, item: Item) -> str:
        """The number after ``####``."""
        return extract_hash_answer(item["answer"]) or ""

    def reference_completion(self, item: Item) -> str:
        reasoning = item["answer"].rsplit("####", 1)[0].strip()
        return answer_block(reasoning, self.gold_answer(item))

    def answer_of(self, completion: str) -> str | None:
        """The tagged or boxed answer, else the last number."""
        return extract_final_answer(completion, number_fallback=True)

    def warm_up(self) -> None:
        warm_up_math_verify()  # a non-numeric answer is checked by math-verify

    def reward(self, item: Item, completion: str) -> float:
        return gsm8k_reward(completion, self.gold_answer(item))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MathProblems(Task):
    """Competition problems: ``problem`` and a short ``answer`` compared by math equivalence."""

    name: str
    data: DataFiles

    def prompt_text(self, item: Item) -> str:
        return f"{SYSTEM_PROMPT}\n\n{item['problem']}"

    def gold_answer(self, item: Item) -> str | None:
        """The ``answer`` field as text (AIME files hold numbers); None where it is null, which
        no completion matches."""
        answer = item["answer"]
        return None if answer is None else str(answer)

    def reference_completion(self, item: Item) -> str:
        return answer_block("See the solution.", f"\\boxed{{{self.gold_answer(item) or ''}}}")

    def answer_of(self, completion: str) -> str | None:
        """The tagged or boxed answer (no number fallback)."""
        return extract_final_answer(completion)

    def warm_up(self) -> None:
        warm_up_math_verify()

    def reward(self, item: Item, completion: str) -> float:
        return math_reward(completion, self.gold_answer(item))


def math_files(*files: str, hf: tuple[str, str | None, str] | None = None) -> DataFiles:
    """The data files of a MATH-style benchmark (records with ``problem`` and ``answer``)."""
    return DataFiles(files=files, required=("problem", "answer"), hf=hf)
