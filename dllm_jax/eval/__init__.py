"""Benchmark evaluation: tasks (loading, prompts, scoring), a process sandbox for code, pass@k
scoring of prediction files and the resumable generate-then-score loop.

``dllm-jax eval --model DIR --tasks gsm8k,math500 ...`` runs :func:`run_eval`;
``dllm-jax eval score --task gsm8k --data PATH --predictions FILE.jsonl`` runs
:func:`score_predictions`.
"""

from dllm_jax.eval.harness import run_eval, score_predictions, summarize
from dllm_jax.tasks.benchmarks import TASKS, Task, get_task

__all__ = ["TASKS", "Task", "get_task", "run_eval", "score_predictions", "summarize"]
