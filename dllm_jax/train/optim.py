"""The optimiser: global-norm clipping, then AdamW with warmup + cosine (or constant) schedule."""

from __future__ import annotations

import optax

from dllm_jax.train.config import OptimConfig


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``lr * end_lr_factor``
    at ``total_steps`` (or constant ``lr``)."""
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0 if cfg.warmup_steps else cfg.lr, cfg.lr, max(cfg.warmup_steps, 1),
            max(cfg.total_steps, cfg.warmup_steps + 1), cfg.lr * cfg.end_lr_factor)
    if cfg.warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps),
             optax.constant_schedule(cfg.lr)], [cfg.warmup_steps])
    return optax.constant_schedule(cfg.lr)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm(clip_norm)`` (if set) then AdamW on the schedule above.

    AdamW's moments take the parameters' dtype (optax's default), so bf16 parameters keep
    bf16 moments; the moments are sharded like the parameters by ``state_shardings``.
    """
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay))
    return optax.chain(*parts)
