"""Built-in synthetic reasoning tasks with exact verifiers and a character tokenizer, so the
whole pipeline runs with no download: multi-digit addition, 4x4 Sudoku, Countdown."""

from dllm_jax.tasks.arithmetic import Addition, Countdown, eval_equation, solve_countdown
from dllm_jax.tasks.base import Example, encode_examples, is_test_item
from dllm_jax.tasks.chartok import CharTokenizer, model_config
from dllm_jax.tasks.sudoku import Sudoku, count_solutions, is_valid_solution

TASKS = {"addition": Addition, "sudoku": Sudoku, "countdown": Countdown}


def get_task(name: str, **kwargs):
    """A built-in task by name (``addition``, ``sudoku``, ``countdown``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](**kwargs)


__all__ = ["Addition", "CharTokenizer", "Countdown", "Example", "Sudoku", "TASKS",
           "count_solutions", "encode_examples", "eval_equation", "get_task", "is_test_item",
           "is_valid_solution", "model_config", "solve_countdown"]
