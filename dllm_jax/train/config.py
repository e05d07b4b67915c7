"""Frozen, validated training configs (YAML files in ``configs/`` override these fields)."""

from __future__ import annotations

import dataclasses

from dllm_jax.train.lora import LoRAConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with warmup + cosine (or constant) schedule and global-norm clipping.

    ``grad_accum``: micro-batches per step (a ``lax.scan`` inside the compiled step).
    """

    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 0
    total_steps: int = 1000
    end_lr_factor: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8  # AdamW's denominator epsilon
    clip_norm: float | None = 1.0
    grad_accum: int = 1

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(
                f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError("optim.warmup_steps must be >= 0 and optim.total_steps >= 1")
        if self.grad_accum < 1:
            raise ValueError(f"optim.grad_accum must be >= 1, got {self.grad_accum}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"optim.clip_norm must be > 0 or null, got {self.clip_norm}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Save every ``every`` steps and at the end, keeping the newest ``keep``."""

    every: int = 100
    keep: int = 2

    def __post_init__(self):
        if self.every < 1 or self.keep < 1:
            raise ValueError("checkpoint.every and checkpoint.keep must be >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run.

    Attributes:
      seed: drives the data order (``batch_fn``), every step's key ``fold_in(seed key, step)``
        and LoRA's initial adapters.
      steps: optimiser steps (each sees ``batch_size`` rows in ``optim.grad_accum``
        micro-batches).
      batch_size: global rows per step.
      mesh: ``(data, fsdp, tensor)``; None puts every device on ``fsdp``.
      log_every: metrics cadence (``metrics.jsonl``, progress bar, TensorBoard).
      tensorboard: also write TensorBoard event files (needs ``tensorboardX``).
      optim / checkpoint / lora: see their classes (``lora.rank: 0`` = full fine-tuning).
    """

    seed: int = 0
    steps: int = 100
    batch_size: int = 32
    mesh: tuple[int, int, int] | None = None  # (data, fsdp, tensor); default all on fsdp
    log_every: int = 10
    tensorboard: bool = False
    optim: OptimConfig = OptimConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    lora: LoRAConfig = LoRAConfig()

    def __post_init__(self):
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if self.mesh is not None:
            if len(self.mesh) != 3:
                raise ValueError(f"mesh must have 3 entries (data, fsdp, tensor), got {self.mesh}")
            object.__setattr__(self, "mesh", tuple(int(x) for x in self.mesh))
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.batch_size % self.optim.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by "
                             f"optim.grad_accum {self.optim.grad_accum}")
