"""Built-in synthetic reasoning tasks with exact verifiers and a character tokenizer.

Everything here runs with no download: ``get_task("addition" | "sudoku" | "countdown")``
returns a frozen task spec with ``generate(seed, n, split)``, ``verify(example, completion)``,
``format_reward(completion)``, ``prompt_length`` and ``answer_length``;
:func:`encode_examples` turns examples into fixed-shape id arrays with a
:class:`CharTokenizer`.
"""

from __future__ import annotations

from typing import Any

from dllm_jax.tasks.addition import Addition
from dllm_jax.data.chartok import CharTokenizer, model_config
from dllm_jax.tasks.common import Example, encode_examples, is_test_item, split_of
from dllm_jax.tasks.countdown import Countdown, eval_equation, solve_countdown
from dllm_jax.tasks.sudoku import Sudoku, count_solutions, is_valid_solution

TASKS: dict[str, type] = {"addition": Addition, "sudoku": Sudoku, "countdown": Countdown}

Task = Addition | Sudoku | Countdown


def get_task(name: str, **spec: Any) -> Task:
    """The built-in task ``name`` with its spec fields overridden by ``spec``.

    Raises:
      ValueError: unknown task name, unknown spec field or a bad value.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {sorted(TASKS)}")
    cls = TASKS[name]
    try:
        return cls(**spec)
    except TypeError as e:
        raise ValueError(f"task {name!r}: {e}") from None


__all__ = ["TASKS", "Addition", "CharTokenizer", "Countdown", "Example", "Sudoku", "Task",
           "count_solutions", "encode_examples", "eval_equation", "get_task", "is_test_item",
           "is_valid_solution", "model_config", "solve_countdown", "split_of"]
