"""dllm-jax: masked diffusion language models (LLaDA, Dream) in JAX / Flax NNX.

The public face: :func:`from_pretrained`, :func:`denoise_step`, :func:`generate` (and the model
types). Inside the package nothing imports this module; the architecture is in
docs/architecture.md.

Shape legend used in names throughout: B batch, L length (P prompt, G generation), D model
width, H query heads, K kv heads, E head dim, F MLP width, V vocabulary, T denoising steps,
S trajectory states.
"""

from dllm_jax.model.config import ModelConfig
from dllm_jax.model.transformer import Transformer, denoise_step, init_model
from dllm_jax.sampling import generate
from dllm_jax.weights import from_pretrained

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Transformer", "denoise_step", "from_pretrained", "generate",
           "init_model"]
