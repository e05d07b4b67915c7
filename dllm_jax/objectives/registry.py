"""Losses and selectors by name, each with a frozen, validated config dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from dllm_jax.objectives import agdo, losses


def _positive(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    eps: float = 1e-3  # LLaDA's minimum masking probability

    def __post_init__(self):
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffuGRPOConfig:
    eps: float = 0.5
    beta: float = 0.04
    p_mask_prompt: float = 0.15
    num_iterations: int = 12  # mu
    advantage: str = "center"

    def __post_init__(self):
        _positive("eps", self.eps)
        _positive("beta", self.beta)
        if not 0 <= self.p_mask_prompt <= 1:
            raise ValueError(f"p_mask_prompt must be in [0, 1], got {self.p_mask_prompt}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TraceRLConfig:
    eps: float = 0.2
    beta: float = 0.01
    shrinkage: int = 8
    advantage: str = "zscore"

    def __post_init__(self):
        _positive("eps", self.eps)
        _positive("beta", self.beta)
        if self.shrinkage < 1:
            raise ValueError(f"shrinkage must be >= 1, got {self.shrinkage}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class WD1Config:
    advantage: str = "center"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AGDOSFTConfig:
    gamma: float = 100.0
    n_per_step: int = 1

    def __post_init__(self):
        _positive("gamma", self.gamma)
        if self.n_per_step < 1:
            raise ValueError(f"n_per_step must be >= 1, got {self.n_per_step}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AGDORLConfig:
    delta: float = 5.0
    eps: float = 0.2
    beta: float = 0.0
    n_per_step: int = 1
    advantage: str = "zscore"

    def __post_init__(self):
        _positive("delta", self.delta)
        _positive("eps", self.eps)
        if self.n_per_step < 1:
            raise ValueError(f"n_per_step must be >= 1, got {self.n_per_step}")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    config: type
    fn: Callable[..., Any]


LOSSES: dict[str, LossSpec] = {
    "sft": LossSpec(SFTConfig, losses.sft_loss),
    "diffu_grpo": LossSpec(DiffuGRPOConfig, losses.diffu_grpo_loss),
    "tracerl": LossSpec(TraceRLConfig, losses.tracerl_loss),
    "wd1": LossSpec(WD1Config, losses.wd1_loss),
    "agdo_sft": LossSpec(AGDOSFTConfig, agdo.agdo_sft_loss),
    "agdo_rl": LossSpec(AGDORLConfig, agdo.agdo_rl_loss),
}


def get_loss(name: str) -> LossSpec:
    """The loss function and its config class by name."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name]
