"""Where the training programs get their data: one :class:`DataSource` protocol, two sources.

- :class:`TaskSource`: one split of a built-in task (``dllm_jax.tasks``), encoded with the
  character tokenizer, scored by the task's exact verifier;
- :class:`FileSource`: prompt/answer records of a JSONL/CSV/Parquet file or HF dataset,
  encoded with an HF (or saved character) tokenizer, scored by exact match or the GSM8K / MATH
  answer checkers.

Both have fixed prompt and answer widths (``prompt_length`` P, ``answer_length`` A), SFT
batches that are pure functions of the step, prompts (and their attention masks) by row and
rewards by row. A completion is scored on its ids before the first EOS: the sampler returns
exactly what it committed, tokens after an EOS included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dllm_jax.data.batching import completion_until_eos
from dllm_jax.data.records import batch_rows, encode_sft, load_records
from dllm_jax.tasks import CharTokenizer, encode_examples, get_puzzle
from dllm_jax.tasks.answers import gsm8k_reward, math_reward

BatchFn = Callable[[int], dict[str, np.ndarray]]


def _exact_reward(completion: str, gold: str) -> float:
    return float(completion.strip() == gold.strip())


REWARDS: dict[str, Callable[[str, str], float]] = {
    "exact": _exact_reward, "gsm8k": gsm8k_reward, "math": math_reward}


class DataSource(Protocol):
    """What the SFT and RL programs read.

    Attributes:
      tokenizer: encodes and decodes the source's text.
      prompt_length / answer_length: P and A, the fixed widths of the encoded prompt (left
        padded for files) and answer (EOS padded).
      num_prompts: rows available for RL prompts.
    """

    tokenizer: Any
    prompt_length: int
    answer_length: int
    num_prompts: int

    def sft_batch_fn(self, batch_size: int, seed: int) -> BatchFn:
        """``step -> {"tokens" [batch, P + A], "response_mask", ("attention_mask")}``, the
        rows of consecutive slices of per-epoch permutations (a pure function of the step)."""
        ...

    def prompts(self, rows: np.ndarray) -> np.ndarray:
        """int32 ``[len(rows), P]``, the encoded prompts of those rows (left-padded)."""
        ...

    def prompt_mask(self, rows: np.ndarray) -> np.ndarray:
        """int32 ``[len(rows), P]``, 1 on the real prompt tokens, 0 on the left padding."""
        ...

    def rewards(self, rows: np.ndarray, completions: np.ndarray) -> np.ndarray:
        """float32 ``[R]``: the reward of completion ``completions[i]`` (ids ``[R, G]``, read
        up to their first EOS) for the prompt of row ``rows[i]``."""
        ...

    def save_tokenizer(self, directory: str | Path) -> None:
        """Writes the tokenizer beside a saved checkpoint."""
        ...


def _batch_fn(arrays: dict[str, np.ndarray], batch_size: int, seed: int) -> BatchFn:
    n = next(iter(arrays.values())).shape[0]
    batch_rows(n, batch_size, seed, 0)  # a batch larger than the data fails here, not later

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rows = batch_rows(n, batch_size, seed, step)
        return {k: v[rows] for k, v in arrays.items()}

    return batch_fn


class TaskSource:
    """``n`` examples of one split of a built-in task with the character tokenizer.

    Args:
      task: the task name (``dllm_jax.tasks.get_puzzle``).
      seed: generation seed.
      n: number of examples.
      split: ``train`` or ``test`` (the test split never shares a puzzle with any train set).
      options: the task's spec fields (e.g. ``{"grid_split": "val"}`` for Sudoku).
    """

    def __init__(self, task: str, seed: int, n: int, split: str = "train",
                 options: dict | None = None):
        self.task_name = task
        self.task = get_puzzle(task, **(options or {}))
        self.tokenizer = CharTokenizer()
        self.examples = self.task.generate(seed, n, split=split)
        enc = encode_examples(self.tokenizer, self.examples,
                              answer_length=self.task.answer_length)
        self.prompt_BP, self.answer_BA = enc["prompt_BP"], enc["answer_BA"]
        self.prompt_length = self.prompt_BP.shape[1]
        self.answer_length = self.answer_BA.shape[1]
        self.num_prompts = len(self.examples)

    @classmethod
    def validation(cls, task: str, seed: int, n: int, options: dict | None = None
                   ) -> TaskSource:
        """Train-pool puzzles drawn with another seed (``seed + 1000``): a validation set that
        leaves the held-out test split unseen."""
        return cls(task, seed + 1000, n, split="train", options=options)

    def sft_batch_fn(self, batch_size: int, seed: int) -> BatchFn:
        tokens = np.concatenate([self.prompt_BP, self.answer_BA], 1).astype(np.int32)
        resp = np.zeros_like(tokens)
        resp[:, self.prompt_length:] = 1
        return _batch_fn({"tokens": tokens, "response_mask": resp}, batch_size, seed)

    def prompts(self, rows: np.ndarray) -> np.ndarray:
        return self.prompt_BP[np.asarray(rows)]

    def prompt_mask(self, rows: np.ndarray) -> np.ndarray:
        return np.ones((len(rows), self.prompt_length), np.int32)  # equal-length prompts

    def rewards(self, rows: np.ndarray, completions: np.ndarray) -> np.ndarray:
        eos = self.tokenizer.eos_id
        return np.asarray([self.task.rl_reward(self.examples[int(i)],
                                            self.tokenizer.decode(completion_until_eos(c, eos)))
                           for i, c in zip(rows, completions, strict=True)], np.float32)

    def save_tokenizer(self, directory: str | Path) -> None:
        self.tokenizer.save(directory)


class FileSource:
    """Prompt/answer records of a file or HF dataset (see ``dllm_jax.data.records``).

    Args:
      path: JSONL / CSV / Parquet file, ``save_to_disk`` directory or HF dataset name.
      tokenizer: an HF tokenizer or a :class:`~dllm_jax.tasks.CharTokenizer`.
      eos_id / pad_id: the model's EOS and padding ids.
      split, prompt_field, answer_field: which records and fields.
      reward: ``exact`` | ``gsm8k`` | ``math`` (:data:`REWARDS`), how RL scores a completion
        against the answer field.
      chat_template: render prompts with the tokenizer's chat template when it has one.
      max_prompt_length / max_answer_length: truncation limits.
    """

    def __init__(self, path: str, tokenizer: Any, *, eos_id: int, pad_id: int,
                 split: str = "train", prompt_field: str = "prompt",
                 answer_field: str = "answer", reward: str = "exact",
                 chat_template: bool = True, max_prompt_length: int = 256,
                 max_answer_length: int = 256):
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {sorted(REWARDS)}, got {reward!r}")
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.records = load_records(path, split, (prompt_field, answer_field))
        self.answers = [str(r[answer_field]) for r in self.records]
        self.reward = REWARDS[reward]
        self.enc = encode_sft(self.records, tokenizer, prompt_field=prompt_field,
                              answer_field=answer_field, max_prompt_length=max_prompt_length,
                              max_answer_length=max_answer_length, chat_template=chat_template,
                              eos_id=eos_id, pad_id=pad_id)
        self.prompt_length = int((self.enc["response_mask"][0] == 0).sum())
        self.answer_length = self.enc["tokens"].shape[1] - self.prompt_length
        self.num_prompts = len(self.records)

    def sft_batch_fn(self, batch_size: int, seed: int) -> BatchFn:
        return _batch_fn(self.enc, batch_size, seed)

    def prompts(self, rows: np.ndarray) -> np.ndarray:
        return self.enc["tokens"][np.asarray(rows), :self.prompt_length]

    def prompt_mask(self, rows: np.ndarray) -> np.ndarray:
        return self.enc["attention_mask"][np.asarray(rows), :self.prompt_length]

    def rewards(self, rows: np.ndarray, completions: np.ndarray) -> np.ndarray:
        texts = [self.tokenizer.decode(completion_until_eos(c, self.eos_id),
                                       skip_special_tokens=True) for c in completions]
        return np.asarray([self.reward(text, self.answers[int(i)])
                           for i, text in zip(rows, texts, strict=True)], np.float32)

    def save_tokenizer(self, directory: str | Path) -> None:
        if isinstance(self.tokenizer, CharTokenizer):
            self.tokenizer.save(directory)
        else:
            self.tokenizer.save_pretrained(str(directory))
