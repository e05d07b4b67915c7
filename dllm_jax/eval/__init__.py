"""Benchmark evaluation over the tasks of :mod:`dllm_jax.tasks`: pass@k metrics, a process
sandbox for code, pass@k scoring of prediction files and the resumable generate-then-score loop.

``dllm-jax eval --model DIR --tasks gsm8k,math500 ...`` runs :func:`run_eval`;
``dllm-jax eval score --task gsm8k --data PATH --predictions FILE.jsonl`` runs
:func:`score_predictions`.
"""

from dllm_jax.eval.harness import program_runner, run_eval, score_predictions, summarize

__all__ = ["program_runner", "run_eval", "score_predictions", "summarize"]
