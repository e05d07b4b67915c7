"""Weights: HF checkpoints in and out, dllm-jax (orbax) checkpoints, the key tables, and a
validating streaming safetensors reader/writer. See docs/model.md, "Conversion"."""

from dllm_jax.weights.checkpoint import (
    CONFIG_NAME,
    GENERATION_NAME,
    atomic_output_dir,
    check_model_dir,
    generation_settings,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_generation_settings,
)
from dllm_jax.weights.convert import checkpoint_to_hf, from_pretrained, hf_to_checkpoint
from dllm_jax.weights.hf import export_hf, load_hf, read_hf_config
from dllm_jax.weights.keys import KEY_TABLES, abstract_state, hf_key

__all__ = ["CONFIG_NAME", "GENERATION_NAME", "KEY_TABLES", "abstract_state", "atomic_output_dir",
           "check_model_dir", "checkpoint_to_hf", "export_hf", "from_pretrained",
           "generation_settings", "hf_key", "hf_to_checkpoint", "is_checkpoint",
           "load_checkpoint", "load_hf", "read_hf_config", "save_checkpoint",
           "save_generation_settings"]
