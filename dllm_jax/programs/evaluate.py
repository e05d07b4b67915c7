"""Scoring a trained model on a built-in task's prompts, as the demo, the studies and the
CLI's programs do: greedy accuracy under a decoding order (one token per step) and pass@k at
temperature 1."""

from __future__ import annotations

import math

import numpy as np

from dllm_jax.eval.metrics import pass_at_k
from dllm_jax.programs.datasources import TaskSource
from dllm_jax.sampling import LLaDAConfig, generate


def evaluate(model, source: TaskSource, remasking: str, *, record: bool = False, seed: int = 0):
    """Accuracy on every row of ``source`` with one token per step at temperature 0 under the
    ``remasking`` rule (random order for ``random``, AGDO's attention order for ``max_s``)."""
    a = source.answer_length
    cfg = LLaDAConfig(steps=a, gen_length=a, block_length=a, remasking=remasking,
                      temperature=0.0)
    rows = np.arange(source.num_prompts)
    out = generate(model, source.prompts(rows), config=cfg, key=seed, record=record)
    comp = np.asarray(out.sequences)[:, source.prompt_length:]
    correct = source.rewards(rows, comp) >= 1.0
    return float(correct.mean()), correct, out.trajectory


def pass_at_k_curve(model, source: TaskSource, remasking: str, n: int, seed: int = 0
                    ) -> dict[str, float]:
    """pass@k for k = 1, 2, 4, ... n: ``n`` samples per prompt of ``source`` at temperature 1
    under the ``remasking`` rule, one token per step (the unbiased estimator of
    :func:`~dllm_jax.eval.metrics.pass_at_k`)."""
    a = source.answer_length
    rows = np.repeat(np.arange(source.num_prompts), n)
    cfg = LLaDAConfig(steps=a, gen_length=a, block_length=a, remasking=remasking,
                      temperature=1.0)
    seqs = np.asarray(generate(model, source.prompts(rows), config=cfg, key=seed).sequences)
    c = (source.rewards(rows, seqs[:, source.prompt_length:]) >= 1).reshape(-1, n).sum(1)
    ks = [2 ** i for i in range(int(math.log2(n)) + 1)]
    return {str(k): float(np.mean([pass_at_k(n, int(ci), k) for ci in c])) for k in ks}
