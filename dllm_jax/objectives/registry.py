"""Losses by name, each with a frozen, keyword-only, validated config dataclass.

``get_loss(name)`` returns a :class:`LossSpec`: the config class, the pure loss function and
:meth:`LossSpec.loss_kwargs`, which picks from a config the fields that are keyword arguments
of the function (the rest, e.g. ``shrinkage`` or ``p_mask_prompt``, configure how the
trainer builds the loss inputs).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from dllm_jax.objectives import agdo, losses

ADVANTAGE_MODES = ("center", "zscore")


def _nonneg(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _clip(eps: float) -> None:
    if not 0 < eps < 1:
        raise ValueError(f"eps (PPO clip range) must be in (0, 1), got {eps}")


def _advantage(mode: str) -> None:
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"advantage must be one of {ADVANTAGE_MODES}, got {mode!r}")


def _at_least_one(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """Masked-diffusion SFT (LLaDA): ``eps`` is the minimum masking probability."""

    eps: float = 1e-3

    def __post_init__(self):
        if not 0 <= self.eps < 1:
            raise ValueError(f"eps must be in [0, 1), got {self.eps}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffuGRPOConfig:
    """diffu-GRPO (d1): clip ``eps``, KL ``beta``, prompt masking rate, mu inner iterations."""

    eps: float = 0.5
    beta: float = 0.04
    p_mask_prompt: float = 0.15
    num_iterations: int = 12
    advantage: str = "center"

    def __post_init__(self):
        _clip(self.eps)
        _nonneg("beta", self.beta)
        if not 0 <= self.p_mask_prompt <= 1:
            raise ValueError(f"p_mask_prompt must be in [0, 1], got {self.p_mask_prompt}")
        _at_least_one("num_iterations", self.num_iterations)
        _advantage(self.advantage)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TraceRLConfig:
    """TraceRL: clip ``eps``, KL ``beta``, ``shrinkage`` consecutive steps per state."""

    eps: float = 0.2
    beta: float = 0.01
    shrinkage: int = 8
    advantage: str = "zscore"

    def __post_init__(self):
        _clip(self.eps)
        _nonneg("beta", self.beta)
        _at_least_one("shrinkage", self.shrinkage)
        _advantage(self.advantage)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WD1Config:
    """wd1: only the advantage mode (the loss is ratio-free and has no KL)."""

    advantage: str = "center"

    def __post_init__(self):
        _advantage(self.advantage)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AGDOSFTConfig:
    """AGDO-SFT: weight ``1 + gamma I_k``; ``n_per_step`` tokens per order step."""

    gamma: float = 100.0
    n_per_step: int = 1

    def __post_init__(self):
        _nonneg("gamma", self.gamma)
        _at_least_one("n_per_step", self.n_per_step)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AGDORLConfig:
    """AGDO-RL: advantage bonus ``delta``, clip ``eps``, KL ``beta``, order granularity."""

    delta: float = 5.0
    eps: float = 0.2
    beta: float = 0.0
    n_per_step: int = 1
    advantage: str = "zscore"

    def __post_init__(self):
        _nonneg("delta", self.delta)
        _clip(self.eps)
        _nonneg("beta", self.beta)
        _at_least_one("n_per_step", self.n_per_step)
        _advantage(self.advantage)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss: its config class and its pure function."""

    config: type
    fn: Callable[..., Any]

    def loss_kwargs(self, cfg: Any) -> dict[str, Any]:
        """The config fields that are keyword arguments of :attr:`fn`."""
        if not isinstance(cfg, self.config):
            raise ValueError(f"expected a {self.config.__name__}, got {type(cfg).__name__}")
        params = inspect.signature(self.fn).parameters
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                if f.name in params}


LOSSES: dict[str, LossSpec] = {
    "sft": LossSpec(SFTConfig, losses.sft_loss),
    "diffu_grpo": LossSpec(DiffuGRPOConfig, losses.diffu_grpo_loss),
    "tracerl": LossSpec(TraceRLConfig, losses.tracerl_loss),
    "wd1": LossSpec(WD1Config, losses.wd1_loss),
    "agdo_sft": LossSpec(AGDOSFTConfig, agdo.agdo_sft_loss),
    "agdo_rl": LossSpec(AGDORLConfig, agdo.agdo_rl_loss),
}


def get_loss(name: str) -> LossSpec:
    """The loss function and its config class by name (see :data:`LOSSES`)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name]
