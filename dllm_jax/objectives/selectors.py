"""Which denoising states enter the trajectory loss: ATPO and its baselines.

See docs/objectives.md, "ATPO step selection".

Every selector maps the rollouts' recorded step profiles (``entropy``, ``margin``, ``roec``,
each ``[B, T]``, and ``valid_BT``: which steps committed something) and a budget of K states
per rollout to step ranges ``starts_BK`` and ``ends_BK`` (a state covers steps
``start .. end - 1``; its input masks every token committed at a step ``>= start`` and its
targets are the tokens committed in the range). Steps that committed nothing are never chosen
and never enter a score; a rollout with fewer than K valid steps gets all of them plus empty
ranges ``[T, T)`` (no targets: they add nothing to the loss). Selectors are jittable and
deterministic for a fixed key. Feed their output to
:func:`dllm_jax.objectives.scoring.states_from_steps`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

AVERAGING = ("none", "batch", "group")


def _mask(valid_BT, shape: tuple[int, ...]) -> jax.Array:
    """``valid_BT`` as bool; None means every step is valid."""
    return jnp.ones(shape, jnp.bool_) if valid_BT is None else jnp.asarray(valid_BT, jnp.bool_)


def _zscore(x_BT: jax.Array, valid_BT: jax.Array) -> jax.Array:
    """z-scores over each row's valid steps (population std); 0 where the std is 0 and at
    invalid steps."""
    w = valid_BT.astype(jnp.float32)
    n = jnp.maximum(w.sum(-1, keepdims=True), 1.0)
    mu = (x_BT * w).sum(-1, keepdims=True) / n
    sd = jnp.sqrt((((x_BT - mu) * w) ** 2).sum(-1, keepdims=True) / n)
    return jnp.where(valid_BT & (sd > 0), (x_BT - mu) / jnp.where(sd > 0, sd, 1.0), 0.0)


def _average(score_BT: jax.Array, valid_BT: jax.Array, how: str, group_size: int) -> jax.Array:
    """The score of step t averaged over the rows (of the batch or the group) whose step t is
    valid."""
    if how == "none":
        return score_BT
    r, t = score_BT.shape
    rows = r if how == "batch" else group_size
    w = valid_BT.astype(jnp.float32).reshape(r // rows, rows, t)
    total = (score_BT.reshape(r // rows, rows, t) * w).sum(1, keepdims=True)
    mean = total / jnp.maximum(w.sum(1, keepdims=True), 1.0)
    return jnp.broadcast_to(mean, (r // rows, rows, t)).reshape(r, t)


def _check(entropy_BT, margin_BT, roec_BT, valid_BT, k: int, group_size: int = 1,
           average: str = "none") -> tuple[int, int, jax.Array]:
    """Validates the profiles and the budget; returns ``(B, T, valid_BT)`` (None: all valid)."""
    shapes = {tuple(jnp.shape(x)) for x in (entropy_BT, margin_BT, roec_BT)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"entropy, margin and roec must share one [B, T] shape, got "
                         f"{[tuple(jnp.shape(x)) for x in (entropy_BT, margin_BT, roec_BT)]}")
    b, t = next(iter(shapes))
    if valid_BT is not None and tuple(jnp.shape(valid_BT)) != (b, t):
        raise ValueError(f"valid_BT has shape {tuple(jnp.shape(valid_BT))}, the profiles "
                         f"{(b, t)}")
    if not 1 <= k <= t:
        raise ValueError(f"budget k={k} must be in [1, T={t}]")
    if average == "group" and (group_size < 1 or b % group_size):
        raise ValueError(f"group averaging needs B={b} to be a multiple of group_size={group_size}")
    return b, t, _mask(valid_BT, (b, t))


def _top_k(key_BT: jax.Array, eligible_BT: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The K steps with the largest keys among the eligible ones, and whether each pick is
    eligible (False only when fewer than K steps are)."""
    steps = jax.lax.top_k(jnp.where(eligible_BT, key_BT, -jnp.inf), k)[1]
    return steps, jnp.take_along_axis(eligible_BT, steps, axis=-1)


def _single_steps(steps_BK: jax.Array, ok_BK: jax.Array, t: int) -> tuple[jax.Array, jax.Array]:
    """One state per picked step, sorted; a pick that is not ``ok`` becomes ``[T, T)``."""
    starts = jnp.sort(jnp.where(ok_BK, steps_BK, t), axis=-1).astype(jnp.int32)
    return starts, jnp.where(starts < t, starts + 1, t).astype(jnp.int32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniformSelector:
    """TraceRL's grouping over a rollout's valid steps: the n valid steps split into K runs of
    consecutive valid steps (a run's range reaches the next run's first step, so every
    committed token is a target of exactly one state). With every step valid this is the T
    steps in K runs (shrinkage ``T / K``)."""

    def __call__(self, key, entropy_BT, margin_BT, roec_BT, k: int, group_size: int = 1, *,
                 valid_BT=None):
        r, t, valid = _check(entropy_BT, margin_BT, roec_BT, valid_BT, k)
        n = valid.sum(-1, keepdims=True)
        order = jnp.argsort(~valid, axis=-1, stable=True)  # the valid steps first, in order
        bounds = jnp.arange(k + 1)[None, :] * n // k  # [R, K + 1] indices into the valid steps

        def step(j):  # the j-th valid step, T past the last one
            return jnp.where(j < n, jnp.take_along_axis(order, jnp.minimum(j, t - 1), -1), t)

        empty = bounds[:, :-1] == bounds[:, 1:]
        starts = jnp.where(empty, t, step(bounds[:, :-1]))
        ends = jnp.where(empty, t, step(bounds[:, 1:]))
        by_start = jnp.argsort(starts, axis=-1, stable=True)
        return (jnp.take_along_axis(starts, by_start, -1).astype(jnp.int32),
                jnp.take_along_axis(ends, by_start, -1).astype(jnp.int32))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomSelector:
    """K distinct valid steps per rollout, uniformly at random."""

    def __call__(self, key, entropy_BT, margin_BT, roec_BT, k: int, group_size: int = 1, *,
                 valid_BT=None):
        r, t, valid = _check(entropy_BT, margin_BT, roec_BT, valid_BT, k)
        return _single_steps(*_top_k(jax.random.uniform(key, (r, t)), valid, k), t)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreSelector:
    """Top-K valid single steps by a score profile, z-normalised per trajectory over its valid
    steps and averaged over the batch (``average='batch'``), the prompt group (``'group'``) or
    not at all, each step over the rows where it is valid.

    ``kind``: ``entropy`` (highest ``H_t``), ``roec`` (highest ``z(RoEC_t)``), ``cm`` (highest
    ``z(1 - CM_t)``) or ``atpo`` (``lam * z(RoEC) + (1 - lam) * z(1 - CM)``). ``rho``: keep the
    top ``ceil(rho K)`` by score and draw the rest uniformly from the other valid steps
    (coverage).
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

    def score(self, entropy_BT, margin_BT, roec_BT, group_size: int = 1, *,
              valid_BT=None) -> jax.Array:
        """The averaged score ``[B, T]`` (its values at a row's invalid steps are not used)."""
        valid = _mask(valid_BT, jnp.shape(entropy_BT))
        if self.kind == "entropy":
            s = _zscore(entropy_BT, valid)
        elif self.kind == "roec":
            s = _zscore(roec_BT, valid)
        elif self.kind == "cm":
            s = _zscore(1.0 - margin_BT, valid)
        else:
            s = self.lam * _zscore(roec_BT, valid) + (1.0 - self.lam) * _zscore(1.0 - margin_BT,
                                                                                 valid)
        return _average(s.astype(jnp.float32), valid, self.average, group_size)

    def __call__(self, key, entropy_BT, margin_BT, roec_BT, k: int, group_size: int = 1, *,
                 valid_BT=None):
        r, t, valid = _check(entropy_BT, margin_BT, roec_BT, valid_BT, k, group_size,
                             self.average)
        s = self.score(entropy_BT, margin_BT, roec_BT, group_size, valid_BT=valid)
        if self.rho is None:
            return _single_steps(*_top_k(s, valid, k), t)
        k_top = min(k, math.ceil(self.rho * k))
        top, top_ok = _top_k(s, valid, k_top)
        taken = jnp.zeros((r, t), jnp.bool_).at[jnp.arange(r)[:, None], top].set(True)
        rest, rest_ok = _top_k(jax.random.uniform(key, (r, t)), valid & ~taken, k - k_top)
        return _single_steps(jnp.concatenate([top, rest], axis=-1),
                             jnp.concatenate([top_ok, rest_ok], axis=-1), t)


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
