"""Samplers for masked diffusion LMs as compiled ``lax.scan`` loops (docs/sampling.md).

``generate(model, prompt_ids, attention_mask, config=LLaDAConfig(...) | DreamConfig(...) |
IMHConfig(...), key=...)`` compiles once per shape and configuration.

Modules: ``presets`` (the configs and their one planning path), ``plan`` (``Plan`` and one
step: ``propose`` / ``select``), ``strategies`` (token samplers, position scorers, transfer
rules), ``sources`` (guidance and KV cache), ``loop`` (``generate`` and the compiled loop),
``record`` (outputs and the trajectory record), ``imh`` (global tempering).
"""

from dllm_jax.sampling.loop import generate
from dllm_jax.sampling.plan import Plan
from dllm_jax.sampling.presets import DreamConfig, IMHConfig, LLaDAConfig, SamplerConfig
from dllm_jax.sampling.record import GenerateOutput, Trajectory

__all__ = ["DreamConfig", "GenerateOutput", "IMHConfig", "LLaDAConfig", "Plan", "SamplerConfig",
           "Trajectory", "generate"]
