"""Tasks: one registry of every task, built-in puzzles and benchmarks, behind one interface.

``get_task(name)`` returns a :class:`Task`: items from ``load(source, limit)``, a prompt from
``prompt_text(item)``, and scoring with ``reward(item, completion)`` / ``score_many(pairs)``.
The built-in puzzles (``addition``, ``sudoku``, ``countdown``; no download) are
:class:`Puzzle` s that also ``generate(seed, n, split)`` compact examples for the tiny
character-level models, with ``verify(example, completion)``, ``format_reward(completion)``,
``prompt_length`` and ``answer_length``; :func:`encode_examples` turns those into fixed-shape
id arrays with a :class:`CharTokenizer`. Countdown and Sudoku also load d1's test files and
score them with the same verifier. :func:`get_puzzle` is :func:`get_task` for callers that need
``generate`` (it refuses a benchmark name with a clear error). See ``docs/tasks.md``.
"""

from __future__ import annotations

from dllm_jax.data.chartok import CharTokenizer, model_config
from dllm_jax.tasks.addition import Addition
from dllm_jax.tasks.base import DataFiles, Item, Task
from dllm_jax.tasks.coding import CodeTask, extract_code
from dllm_jax.tasks.common import Example, Puzzle, encode_examples, is_test_item, split_of
from dllm_jax.tasks.countdown import Countdown, eval_equation, solve_countdown
from dllm_jax.tasks.registry import TASKS, get_puzzle, get_task, parse_task_list
from dllm_jax.tasks.sudoku import Sudoku, count_solutions, is_valid_solution

__all__ = ["TASKS", "Addition", "CharTokenizer", "CodeTask", "Countdown", "DataFiles", "Example",
           "Item", "Puzzle", "Sudoku", "Task", "count_solutions", "encode_examples",
           "eval_equation", "extract_code", "get_puzzle", "get_task", "is_test_item",
           "is_valid_solution", "model_config", "parse_task_list", "solve_countdown",
           "split_of"]
