"""Adapters that plug dllm-jax models into other projects' tools.

``dllm_jax.integrations.lm_eval`` registers the ``dllm_jax`` model with lm-evaluation-harness
(an optional dependency: ``pip install 'dllm-jax[lm-eval]'``); ``elbo`` holds the compiled
likelihood estimate and greedy check it runs, ``requests`` the encoding, bucketing and
stop-string rules, ``model_args`` the validation of its keyword arguments. Nothing here is
imported by the rest of the library (see docs/eval.md, "lm-evaluation-harness").
"""

import importlib.util

LM_EVAL_HINT = "lm-eval is not installed; install it with: pip install 'dllm-jax[lm-eval]'"


def lm_eval_missing() -> bool:
    """True when lm-evaluation-harness cannot be imported (checked without importing it)."""
    return importlib.util.find_spec("lm_eval") is None
