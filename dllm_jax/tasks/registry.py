"""The one task registry: every task by the name users type (``--tasks``, ``--task``,
``data.task``), built-in puzzles and benchmarks alike."""

from __future__ import annotations

import dataclasses
from typing import Any

from dllm_jax.errors import ConfigError
from dllm_jax.tasks.addition import Addition
from dllm_jax.tasks.base import Task
from dllm_jax.tasks.coding import MBPP, HumanEval
from dllm_jax.tasks.common import Puzzle
from dllm_jax.tasks.countdown import Countdown
from dllm_jax.tasks.digitsum import DigitSum
from dllm_jax.tasks.maths import GSM8K, MathProblems, math_files
from dllm_jax.tasks.sudoku import Sudoku

TASKS: dict[str, Task] = {t.name: t for t in [
    Addition(),
    Countdown(),
    DigitSum(),
    Sudoku(),
    GSM8K(),
    MathProblems(name="math500", data=math_files(
        "math500_test.jsonl", "math500.jsonl", hf=("HuggingFaceH4/MATH-500", None, "test"))),
    MathProblems(name="aime24", data=math_files(
        "aime24_test.jsonl", "aime24.jsonl", hf=("HuggingFaceH4/aime_2024", None, "train"))),
    MathProblems(name="aime25", data=math_files(
        "aime25_test_fixed.jsonl", "aime25_test.jsonl", "aime25.jsonl")),
    HumanEval(),
    MBPP(),
]}


def get_task(name: str, **spec: Any) -> Task:
    """The task ``name``, with its spec fields (e.g. ``digits`` of ``addition``) overridden by
    ``spec``.

    Raises:
      ConfigError: unknown task name (the message lists the known ones), unknown spec field
        or a bad value.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    if not spec:
        return TASKS[name]
    try:
        return dataclasses.replace(TASKS[name], **spec)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"task {name!r}: {e}") from None


def get_puzzle(name: str, **spec: Any) -> Puzzle:
    """:func:`get_task` for callers that generate examples (``data.task``, the demo).

    Raises:
      ConfigError: as :func:`get_task`, or ``name`` is a benchmark (its items are only loaded).
    """
    task = get_task(name, **spec)
    if not isinstance(task, Puzzle):
        puzzles = sorted(n for n, t in TASKS.items() if isinstance(t, Puzzle))
        raise ConfigError(f"task {name!r} has no generated examples; built-in puzzles: "
                          f"{', '.join(puzzles)}")
    return task


def parse_task_list(text: str) -> list[Task]:
    """``"gsm8k,math500"`` -> tasks (duplicates and empty names rejected)."""
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise ConfigError(f"--tasks {text!r} has an empty task name")
    if len(set(names)) != len(names):
        raise ConfigError(f"--tasks {text!r} repeats a task")
    return [get_task(n) for n in names]


__all__ = ["TASKS", "Task", "get_puzzle", "get_task", "parse_task_list"]
