"""Training engine: sharded train step (optax AdamW, gradient accumulation), orbax checkpoints
with exact resume, progress and metrics, per-device memory estimates."""

from dllm_jax.train.checkpoint import Checkpointer, CheckpointError
from dllm_jax.train.config import CheckpointConfig, OptimConfig, TrainConfig
from dllm_jax.train.loop import Trainer
from dllm_jax.train.optim import learning_rate_schedule, make_optimizer
from dllm_jax.train.step import (
    init_state,
    make_train_step,
    model_from_state,
    put_batch,
    sft_objective,
    state_shardings,
)

__all__ = ["CheckpointConfig", "CheckpointError", "Checkpointer", "OptimConfig", "TrainConfig",
           "Trainer", "init_state", "learning_rate_schedule", "make_optimizer",
           "make_train_step", "model_from_state", "put_batch", "sft_objective",
           "state_shardings"]
