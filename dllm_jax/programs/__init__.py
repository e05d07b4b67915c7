"""Training programs: the SFT and RL program configs, the one path that builds any registry
loss, rollouts, running a program, scoring its model on a task, the data sources and splits,
the demo and the RL sanity check (docs/training.md). ``dllm_jax.train`` is the engine they run
on (the sharded step, the Trainer, checkpoints)."""

from dllm_jax.programs.config import (
    DataSpec,
    ModelSpec,
    RLConfig,
    RLProgram,
    SFTConfig,
    SFTProgram,
    task_options,
)
from dllm_jax.programs.datasources import DataSource, FileSource, TaskSource
from dllm_jax.programs.evaluate import evaluate, pass_at_k_curve
from dllm_jax.programs.losses import agdo_order, make_rl_loss, make_sft_loss
from dllm_jax.programs.rollouts import RolloutBatcher, rollout_batcher
from dllm_jax.programs.run import (
    StopFn,
    load_model_and_source,
    run_rl,
    run_sft,
    save_model,
    task_generation,
)

__all__ = ["DataSource", "DataSpec", "FileSource", "ModelSpec", "RLConfig", "RLProgram",
           "RolloutBatcher", "SFTConfig", "SFTProgram", "StopFn", "TaskSource", "agdo_order",
           "evaluate", "load_model_and_source", "make_rl_loss", "make_sft_loss",
           "pass_at_k_curve", "rollout_batcher", "run_rl", "run_sft", "save_model",
           "task_generation", "task_options"]
