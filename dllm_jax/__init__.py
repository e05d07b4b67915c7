"""dllm-jax: masked diffusion language models (LLaDA, Dream) in JAX / Flax NNX.

The public face: :func:`from_pretrained`, :func:`denoise_step`, :func:`generate` (and the model
types). Inside the package nothing imports this module; the architecture is in
docs/architecture.md.

Shape legend used in names throughout: B batch, L length (P prompt, G generation), D model
width, H query heads, K kv heads, E head dim, F MLP width, V vocabulary, T denoising steps,
S trajectory states.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Imported on first use, so ``import dllm_jax.cli`` (``dllm-jax --help``) does not start JAX.
_PUBLIC = {"ModelConfig": "dllm_jax.model.config", "Transformer": "dllm_jax.model.transformer",
           "denoise_step": "dllm_jax.model.transformer", "init_model": "dllm_jax.model.transformer",
           "generate": "dllm_jax.sampling", "from_pretrained": "dllm_jax.weights"}

__all__ = ["ModelConfig", "Transformer", "denoise_step", "from_pretrained", "generate",
           "init_model"]

if TYPE_CHECKING:
    from dllm_jax.model.config import ModelConfig
    from dllm_jax.model.transformer import Transformer, denoise_step, init_model
    from dllm_jax.sampling import generate
    from dllm_jax.weights import from_pretrained


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dllm_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
