"""Training engine: sharded train step (optax AdamW, gradient accumulation), orbax checkpoints
with exact resume, progress and metrics."""

from dllm_jax.train.config import CheckpointConfig, OptimConfig, TrainConfig
from dllm_jax.train.loop import Trainer
from dllm_jax.train.step import (
    init_state,
    make_optimizer,
    make_train_step,
    model_from_state,
    sft_objective,
    state_shardings,
)

__all__ = ["CheckpointConfig", "OptimConfig", "TrainConfig", "Trainer", "init_state",
           "make_optimizer", "make_train_step", "model_from_state", "sft_objective",
           "state_shardings"]
