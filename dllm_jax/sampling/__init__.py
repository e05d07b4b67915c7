"""Samplers for masked diffusion LMs as compiled ``lax.scan`` loops (SPEC section 3).

``generate(model, prompt_ids, attention_mask, config=LLaDAConfig(...) | DreamConfig(...) |
IMHConfig(...), key=...)`` compiles once per shape and configuration.
"""

from dllm_jax.sampling.presets import DreamConfig, IMHConfig, LLaDAConfig, Plan, SamplerConfig
from dllm_jax.sampling.loop import GenerateOutput, Trajectory, generate

__all__ = ["DreamConfig", "GenerateOutput", "IMHConfig", "LLaDAConfig", "Plan", "SamplerConfig",
           "Trajectory", "generate"]
