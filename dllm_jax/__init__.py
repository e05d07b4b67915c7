"""dllm-jax: masked diffusion language models (LLaDA, Dream) in JAX / Flax NNX.

Shape legend used in names throughout: B batch, L length (P prompt, G generation), D model
width, H query heads, K kv heads, E head dim, F MLP width, V vocabulary, T denoising steps,
S trajectory states.
"""

from dllm_jax.model.config import ModelConfig
from dllm_jax.model.transformer import Transformer, denoise_step, init_model

__version__ = "0.1.0"


def from_pretrained(path, dtype: str = "float32", mesh=None, **kwargs):
    """Loads an HF checkpoint directory or a dllm-jax (orbax) checkpoint; see ``convert.load``."""
    from dllm_jax.weights.convert import from_pretrained as _load

    return _load(path, dtype=dtype, mesh=mesh, **kwargs)


def generate(model, prompt_ids, attention_mask=None, *, config, key, **kwargs):
    """Samples completions; see :func:`dllm_jax.sampling.generate`."""
    from dllm_jax.sampling import generate as _generate

    return _generate(model, prompt_ids, attention_mask, config=config, key=key, **kwargs)


__all__ = ["ModelConfig", "Transformer", "denoise_step", "from_pretrained", "generate",
           "init_model"]
