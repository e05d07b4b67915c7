"""Which denoising states enter the trajectory loss: ATPO and its baselines (docs/objectives.md, "ATPO step selection").

Every selector maps the rollouts' recorded step profiles (``entropy``, ``margin``, ``roec``,
each ``[B, T]``) and a budget of K states per rollout to step ranges ``starts_BK`` and
``ends_BK`` (a state covers steps ``start .. end - 1``; its input masks every token committed
at a step ``>= start`` and its targets are the tokens committed in the range). Selectors are
jittable and deterministic for a fixed key. Feed their output to
:func:`dllm_jax.objectives.scoring.states_from_steps`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

AVERAGING = ("none", "batch", "group")


def _zscore(x_BT: jax.Array) -> jax.Array:
    mu = x_BT.mean(-1, keepdims=True)
    sd = x_BT.std(-1, keepdims=True)
    return jnp.where(sd > 0, (x_BT - mu) / jnp.where(sd > 0, sd, 1.0), 0.0)


def _average(score_BT: jax.Array, how: str, group_size: int) -> jax.Array:
    if how == "none":
        return score_BT
    if how == "batch":
        return jnp.broadcast_to(score_BT.mean(0, keepdims=True), score_BT.shape)
    r, t = score_BT.shape
    g = score_BT.reshape(r // group_size, group_size, t).mean(1, keepdims=True)
    return jnp.broadcast_to(g, (r // group_size, group_size, t)).reshape(r, t)


def _check(entropy_BT, margin_BT, roec_BT, k: int, group_size: int = 1,
           average: str = "none") -> tuple[int, int]:
    """Validates the profiles and the budget; returns ``(B, T)``."""
    shapes = {tuple(jnp.shape(x)) for x in (entropy_BT, margin_BT, roec_BT)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"entropy, margin and roec must share one [B, T] shape, got "
                         f"{[tuple(jnp.shape(x)) for x in (entropy_BT, margin_BT, roec_BT)]}")
    b, t = next(iter(shapes))
    if not 1 <= k <= t:
        raise ValueError(f"budget k={k} must be in [1, T={t}]")
    if average == "group" and (group_size < 1 or b % group_size):
        raise ValueError(f"group averaging needs B={b} to be a multiple of group_size={group_size}")
    return b, t


def _single_steps(steps_BK: jax.Array) -> tuple[jax.Array, jax.Array]:
    steps = jnp.sort(steps_BK, axis=-1).astype(jnp.int32)
    return steps, steps + 1


def _top_k_steps(score_BT: jax.Array, k: int) -> jax.Array:
    return jax.lax.top_k(score_BT, k)[1]


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniformSelector:
    """TraceRL's grouping: the T steps split into K runs of consecutive steps (shrinkage
    ``T / K``); every committed token is a target of exactly one state."""

    def __call__(self, key, entropy_BT, margin_BT, roec_BT, k: int, group_size: int = 1):
        r, t = _check(entropy_BT, margin_BT, roec_BT, k)
        bounds = [i * t // k for i in range(k + 1)]
        starts = jnp.broadcast_to(jnp.asarray(bounds[:-1], jnp.int32), (r, k))
        ends = jnp.broadcast_to(jnp.asarray(bounds[1:], jnp.int32), (r, k))
        return starts, ends


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomSelector:
    """K distinct single steps per rollout, uniformly at random."""

    def __call__(self, key, entropy_BT, margin_BT, roec_BT, k: int, group_size: int = 1):
        r, t = _check(entropy_BT, margin_BT, roec_BT, k)
        u = jax.random.uniform(key, (r, t))
        return _single_steps(_top_k_steps(u, k))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreSelector:
    """Top-K single steps by a score profile, z-normalised per trajectory and averaged over
    the batch (``average='batch'``), the prompt group (``'group'``) or not at all.

    ``kind``: ``entropy`` (highest ``H_t``), ``roec`` (highest ``z(RoEC_t)``), ``cm`` (highest
    ``z(1 - CM_t)``) or ``atpo`` (``lam * z(RoEC) + (1 - lam) * z(1 - CM)``). ``rho``: keep the
    top ``ceil(rho K)`` by score and draw the rest uniformly from the other steps (coverage).
    """

    kind: str = "atpo"
    lam: float = 0.5
    rho: float | None = None
    average: str = "batch"

    def __post_init__(self):
        if self.kind not in ("entropy", "roec", "cm", "atpo"):
            raise ValueError(f"unknown score selector kind {self.kind!r}")
        if not 0 <= self.lam <= 1:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        if self.rho is not None and not 0 <= self.rho <= 1:
            raise ValueError(f"rho must be in [0, 1], got {self.rho}")
        if self.average not in AVERAGING:
            raise ValueError(f"average must be one of {AVERAGING}, got {self.average!r}")

    def score(self, entropy_BT, margin_BT, roec_BT, group_size: int = 1) -> jax.Array:
        if self.kind == "entropy":
            s = _zscore(entropy_BT)
        elif self.kind == "roec":
            s = _zscore(roec_BT)
        elif self.kind == "cm":
            s = _zscore(1.0 - margin_BT)
        else:
            s = self.lam * _zscore(roec_BT) + (1.0 - self.lam) * _zscore(1.0 - margin_BT)
        return _average(s.astype(jnp.float32), self.average, group_size)

    def __call__(self, key, entropy_BT, margin_BT, roec_BT, k: int, group_size: int = 1):
        _check(entropy_BT, margin_BT, roec_BT, k, group_size, self.average)
        s = self.score(entropy_BT, margin_BT, roec_BT, group_size)
        if self.rho is None:
            return _single_steps(_top_k_steps(s, k))
        k_top = min(k, math.ceil(self.rho * k))
        r, t = s.shape
        top = _top_k_steps(s, k_top)
        taken = jnp.zeros((r, t), jnp.bool_).at[jnp.arange(r)[:, None], top].set(True)
        u = jnp.where(taken, -1.0, jax.random.uniform(key, (r, t)))
        rest = _top_k_steps(u, k - k_top)
        return _single_steps(jnp.concatenate([top, rest], axis=-1))


Selector = Callable[..., tuple[jax.Array, jax.Array]]

SELECTORS: dict[str, Callable[..., Selector]] = {
    "uniform": UniformSelector,
    "random": RandomSelector,
    "entropy": lambda **kw: ScoreSelector(kind="entropy", **kw),
    "roec": lambda **kw: ScoreSelector(kind="roec", **kw),
    "cm": lambda **kw: ScoreSelector(kind="cm", **kw),
    "atpo": lambda **kw: ScoreSelector(kind="atpo", **kw),
}


def get_selector(name: str, **kwargs) -> Selector:
    """A selector by name (``uniform``, ``random``, ``entropy``, ``roec``, ``cm``, ``atpo``)."""
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; choose from {sorted(SELECTORS)}")
    return SELECTORS[name](**kwargs)
