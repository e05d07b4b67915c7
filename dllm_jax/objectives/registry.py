"""The one loss registry the training programs read (docs/objectives.md, "Loss registry").

``get_loss(name)`` returns a :class:`LossSpec`: a frozen, keyword-only, validated config class
whose field defaults are the published settings, the pure loss function, the function that
builds the rows the model scores (from an :class:`SFTBatch` for the SFT program, from
:class:`Rollouts` for the RL program) and the call of the loss function on their log-probs.
The programs dispatch through these entries only; none of them branches on a loss name.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dllm_jax.errors import ConfigError
from dllm_jax.objectives import agdo, losses, scoring

ADVANTAGE_MODES = ("center", "zscore")
PROGRAMS = ("sft", "rl")


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


def _probability(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


# ----------------------------------------------------------------------------- configs
@dataclasses.dataclass(frozen=True, kw_only=True)
class LLaDASFTConfig:
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
    inner_iterations: int = 12
    advantage: str = "center"

    def __post_init__(self):
        _clip(self.eps)
        _nonneg("beta", self.beta)
        _probability("p_mask_prompt", self.p_mask_prompt)
        _at_least_one("inner_iterations", self.inner_iterations)
        _advantage(self.advantage)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TraceRLConfig:
    """TraceRL: clip ``eps``, KL ``beta``, ``shrinkage`` consecutive steps per state (the
    default state budget is ``ceil(T / shrinkage)``)."""

    eps: float = 0.2
    beta: float = 0.01
    shrinkage: int = 8
    inner_iterations: int = 1
    advantage: str = "zscore"

    def __post_init__(self):
        _clip(self.eps)
        _nonneg("beta", self.beta)
        _at_least_one("shrinkage", self.shrinkage)
        _at_least_one("inner_iterations", self.inner_iterations)
        _advantage(self.advantage)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WD1Config:
    """wd1: ratio-free and without KL; log-probs from d1's one-step estimator (prompt masking
    rate ``p_mask_prompt``)."""

    p_mask_prompt: float = 0.15
    inner_iterations: int = 1
    advantage: str = "center"

    def __post_init__(self):
        _probability("p_mask_prompt", self.p_mask_prompt)
        _at_least_one("inner_iterations", self.inner_iterations)
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
    """AGDO-RL: advantage bonus ``delta``, clip ``eps``, KL ``beta``, order granularity,
    ``shrinkage`` order steps per state (as TraceRL's, whose loss AGDO-RL uses)."""

    delta: float = 5.0
    eps: float = 0.2
    beta: float = 0.0
    n_per_step: int = 1
    shrinkage: int = 8
    inner_iterations: int = 1
    advantage: str = "zscore"

    def __post_init__(self):
        _nonneg("delta", self.delta)
        _clip(self.eps)
        _nonneg("beta", self.beta)
        _at_least_one("n_per_step", self.n_per_step)
        _at_least_one("shrinkage", self.shrinkage)
        _at_least_one("inner_iterations", self.inner_iterations)
        _advantage(self.advantage)


# ----------------------------------------------------------------------------- program inputs
@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTBatch:
    """What the SFT program hands a loss's row builder (inside the compiled step).

    Attributes:
      tokens_BL: clean ``[prompt | answer]`` ids; ``response_mask_BL``: 1 on the answer block.
      key: this step's (micro-batch's) PRNG key.
      mask_id: the MASK id; ``prompt_length``: P, the prompt columns.
      attention: ``n_per_step -> (order_BG, influence_BL)``, AGDO's attention order of the
        answer positions and the influence ``I_k``, from one last-layer attention pass of the
        current model on the clean sequences (no gradient).
    """

    tokens_BL: jax.Array
    response_mask_BL: jax.Array
    key: jax.Array
    mask_id: int
    prompt_length: int
    attention: Callable[[int], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rollouts:
    """What the RL program hands a loss's row builder: one RL step's R rollouts.

    Attributes:
      sequences_RL: ``[prompt | completion]`` ids exactly as the sampler committed them
        (tokens after an EOS included), rollouts of one prompt adjacent.
      attention_mask_RL: 1 on real tokens, 0 on the prompts' left padding (never attended to).
      prompt_length: P; ``group_size``: G rollouts per prompt.
      advantages_R / rewards_R: per rollout.
      key: PRNG key for the rows (prompt masks, state selection); the RL loop passes a fresh
        key per inner iteration to losses whose rows are redrawn (``LossSpec.redraw``).
      mask_id / eos_id: the MASK id and the EOS id (None: completions are never cut).
      budget: K states per rollout (losses over trajectory states).
      step_map_RG, entropy_RT, margin_RT, roec_RT, valid_RT: the rollouts' recorded
        trajectory (``step_map_RG`` is the order the rollouts were decoded in; ``valid_RT``
        the steps that committed something, the only ones a selector picks).
      select: the state selector (``rl.selector``) for losses that use one, else None.
      influence: ``() -> influence_RL``, AGDO's ``I_k`` of each rollout from one last-layer
        attention pass of the rollout policy on the completed sequences.
      score: ``(inputs, tokens, attention_mask) -> logp`` under the rollout policy;
        ``score_ref`` the same under the frozen reference policy, None without one.
    """

    sequences_RL: jax.Array
    attention_mask_RL: jax.Array
    prompt_length: int
    group_size: int
    advantages_R: jax.Array
    rewards_R: jax.Array
    key: jax.Array
    mask_id: int
    eos_id: int | None
    budget: int | None
    step_map_RG: jax.Array
    entropy_RT: jax.Array
    margin_RT: jax.Array
    roec_RT: jax.Array
    valid_RT: jax.Array
    select: Callable[..., tuple[jax.Array, jax.Array]] | None
    influence: Callable[[], jax.Array]
    score: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    score_ref: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None


Rows = dict[str, jax.Array]


# ----------------------------------------------------------------------------- row builders
def _forward_masked_rows(b: SFTBatch, cfg: LLaDASFTConfig) -> Rows:
    """LLaDA's forward process on the answer block (the prompt is never masked)."""
    noisy, masked, p_mask = losses.forward_mask(b.key, b.tokens_BL, b.response_mask_BL,
                                                b.mask_id, cfg.eps)
    return {"inputs": noisy, "tokens": b.tokens_BL, "masked": masked, "p_mask": p_mask,
            "response_mask": b.response_mask_BL}


def _order_state_rows(b: SFTBatch, cfg: AGDOSFTConfig) -> Rows:
    """One AGDO state per row: a step t drawn uniformly from the row's order steps; the input
    masks every answer token of a step >= t, the targets are the tokens of step t."""
    order_BG, influence_BL = b.attention(cfg.n_per_step)
    rows, length = b.tokens_BL.shape
    num_steps = math.ceil((length - b.prompt_length) / cfg.n_per_step)
    t_B1 = jax.random.randint(b.key, (rows, 1), 0, num_steps)
    masked, targets = scoring.states_from_steps(order_BG, t_B1, t_B1 + 1)
    sb = scoring.state_batch(b.tokens_BL, b.prompt_length, masked, targets, b.mask_id)
    return {"inputs": sb["inputs"], "tokens": sb["tokens"],
            "targets": sb["targets"].astype(jnp.float32), "influence": influence_BL}


def _scored(r: Rollouts, rows: Rows) -> Rows:
    """Adds the rollout policy's (and the reference policy's) log-probs of the rows."""
    rows["old_logp"] = r.score(rows["inputs"], rows["tokens"], rows["attention_mask"])
    if r.score_ref is not None:
        rows["ref_logp"] = r.score_ref(rows["inputs"], rows["tokens"], rows["attention_mask"])
    return rows


def _one_step_rows(r: Rollouts, cfg: DiffuGRPOConfig | WD1Config) -> Rows:
    """d1's one-step estimator: one row per rollout, the completion fully masked, real prompt
    tokens masked with probability ``p_mask_prompt`` (a fresh draw per key, i.e. per inner
    iteration); targets up to and including the first EOS."""
    seqs, p = r.sequences_RL, r.prompt_length
    resp = jnp.zeros(seqs.shape, bool).at[:, p:].set(True)
    real = jnp.asarray(r.attention_mask_RL).astype(bool)
    comp = resp.astype(jnp.float32)
    if r.eos_id is not None:
        comp = comp.at[:, p:].set(losses.completion_mask_until_eos(seqs[:, p:], r.eos_id))
    inputs, _ = scoring.d1_inputs(r.key, seqs, real & ~resp, resp, cfg.p_mask_prompt,
                                  r.mask_id)
    return {"inputs": inputs, "tokens": seqs, "attention_mask": r.attention_mask_RL,
            "targets": comp, "adv": r.advantages_R, "reward": r.rewards_R}


def _one_step_scored_rows(r: Rollouts, cfg: DiffuGRPOConfig) -> Rows:
    return _scored(r, _one_step_rows(r, cfg))


def _state_rows(r: Rollouts, starts_RK: jax.Array, ends_RK: jax.Array, **extra: jax.Array
                ) -> Rows:
    """K states per rollout over the order it was decoded in (its ``step_map``), row-major
    (rollout, then state), scored: state k masks every token committed at a step >= its start
    and targets the tokens committed in ``[start, end)``."""
    masked, targets = scoring.states_from_steps(r.step_map_RG, starts_RK, ends_RK)
    sb = scoring.state_batch(r.sequences_RL, r.prompt_length, masked, targets, r.mask_id)
    k = starts_RK.shape[1]
    return _scored(r, {"inputs": sb["inputs"], "tokens": sb["tokens"],
                       "attention_mask": jnp.repeat(r.attention_mask_RL, k, axis=0),
                       "targets": sb["targets"].astype(jnp.float32),
                       "adv": jnp.repeat(r.advantages_R, k), "reward": jnp.repeat(r.rewards_R, k),
                       **extra})


def _selected_state_rows(r: Rollouts, cfg: TraceRLConfig) -> Rows:
    """TraceRL / ATPO: the selector's K step ranges over the sampler's recorded steps."""
    starts, ends = r.select(r.key, r.entropy_RT, r.margin_RT, r.roec_RT, r.budget,
                            group_size=r.group_size, valid_BT=r.valid_RT)
    return _state_rows(r, starts, ends)


def _attention_state_rows(r: Rollouts, cfg: AGDORLConfig) -> Rows:
    """AGDO-RL: the rollouts were decoded in the attention-guided order (``max_s``, see
    :func:`_attention_guided_sampler`); its T steps split into K consecutive ranges, with
    the influence ``I_k`` for the per-token advantages."""
    k, t = r.budget, r.entropy_RT.shape[1]  # t: the rollouts' T sampler steps
    bounds = [round(i * t / k) for i in range(k + 1)]
    shape = (r.sequences_RL.shape[0], k)
    starts = jnp.broadcast_to(jnp.asarray(bounds[:-1], jnp.int32), shape)
    ends = jnp.broadcast_to(jnp.asarray(bounds[1:], jnp.int32), shape)
    return _state_rows(r, starts, ends, influence=jnp.repeat(r.influence(), k, axis=0))


def _sampler_steps(cfg: Any, steps: int, gen_length: int) -> int:
    return steps


def _attention_guided_sampler(sampler: Any, cfg: AGDORLConfig) -> Any:
    """AGDO-RL rolls out in its attention-guided order: the ``max_s`` rule (commit the masked
    positions with the most last-layer attention to the committed tokens; full attention, no
    KV cache), ``n_per_step`` tokens per step."""
    if sampler.gen_length != sampler.steps * cfg.n_per_step:
        raise ConfigError(f"rl.n_per_step ({cfg.n_per_step}) must be the rollout sampler's "
                          f"tokens per step, gen_length / steps = {sampler.gen_length} / "
                          f"{sampler.steps}, for loss 'agdo_rl'")
    return dataclasses.replace(sampler, remasking="max_s", cache="none")


# ----------------------------------------------------------------------------- the registry
@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    Attributes:
      config: its config class (the field defaults are the published settings).
      fn: the pure loss function.
      program: ``"sft"`` or ``"rl"``, the training program that trains it.
      rows: ``(SFTBatch | Rollouts, config) -> rows`` the model scores (``inputs``,
        ``tokens``, for RL the ``attention_mask`` too, and what :attr:`args` names).
      args: :attr:`fn`'s positional arguments after the rows' log-probs, by name: a key of
        the rows (an absent one passes None: the reference log-probs without a KL term), or
        ``num_rollouts`` / ``group_size`` (see :meth:`loss`); the config's fields that are
        keyword arguments of :attr:`fn` follow.
      state_steps: for losses over trajectory states, ``(config, sampler steps, generation
        length) -> T``, the steps the K states are drawn from (the default K is
        ``ceil(T / config.shrinkage)``); None: one row per rollout (``rl.budget`` does not
        apply).
      selector: the states come from ``rl.selector`` (TraceRL's grouping or ATPO's rules).
      redraw: the rows are a random draw redrawn at every inner iteration, each scored under
        the rollout policy when the rollouts are made (d1's prompt mask); False: the inner
        iterations reuse one set of rows.
      rollout_sampler: ``(sampler config, config) -> sampler config`` the rollouts decode
        with, when the loss fixes the decoding order (AGDO-RL's attention-guided order);
        None: the configured sampler.
    """

    config: type
    fn: Callable[..., Any]
    program: str
    rows: Callable[[Any, Any], Rows]
    args: tuple[str, ...]
    state_steps: Callable[[Any, int, int], int] | None = None
    selector: bool = False
    redraw: bool = False
    rollout_sampler: Callable[[Any, Any], Any] | None = None

    def loss_kwargs(self, cfg: Any) -> dict[str, Any]:
        """The config fields that are keyword arguments of :attr:`fn`."""
        if not isinstance(cfg, self.config):
            raise ValueError(f"expected a {self.config.__name__}, got {type(cfg).__name__}")
        params = inspect.signature(self.fn).parameters
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                if f.name in params}

    def loss(self, cfg: Any, logp: jax.Array, rows: Rows, *, num_rollouts: float = 1,
             group_size: int = 1) -> tuple[jax.Array, dict]:
        """``(loss, aux)`` of the rows from :attr:`rows` given their current log-probs.

        ``num_rollouts``: rollouts the rows come from (the trajectory losses sum over a
        rollout's states and average over rollouts); ``group_size``: rollouts per prompt.
        """
        counts = {"num_rollouts": num_rollouts, "group_size": group_size}
        args = [counts[a] if a in counts else rows.get(a) for a in self.args]
        return self.fn(logp, *args, **self.loss_kwargs(cfg))

    def default_budget(self, cfg: Any, steps: int, gen_length: int) -> int:
        """``ceil(T / shrinkage)`` states per rollout (see :attr:`state_steps`)."""
        return max(1, math.ceil(self.state_steps(cfg, steps, gen_length) / cfg.shrinkage))


_POLICY = ("old_logp", "ref_logp", "adv")  # the policy-gradient losses' first arguments
LOSSES: dict[str, LossSpec] = {
    "sft": LossSpec(LLaDASFTConfig, losses.sft_loss, "sft", _forward_masked_rows,
                    ("masked", "p_mask", "response_mask")),
    "agdo_sft": LossSpec(AGDOSFTConfig, agdo.agdo_sft_loss, "sft", _order_state_rows,
                         ("targets", "influence")),
    "diffu_grpo": LossSpec(DiffuGRPOConfig, losses.diffu_grpo_loss, "rl", _one_step_scored_rows,
                           (*_POLICY, "targets"), redraw=True),
    "tracerl": LossSpec(TraceRLConfig, losses.tracerl_loss, "rl", _selected_state_rows,
                        (*_POLICY, "targets", "num_rollouts"), state_steps=_sampler_steps,
                        selector=True),
    "wd1": LossSpec(WD1Config, losses.wd1_loss, "rl", _one_step_rows,
                    ("targets", "adv", "group_size"), redraw=True),
    "agdo_rl": LossSpec(AGDORLConfig, agdo.agdo_rl_loss, "rl", _attention_state_rows,
                        (*_POLICY, "influence", "targets", "num_rollouts"),
                        state_steps=_sampler_steps, rollout_sampler=_attention_guided_sampler),
}


def get_loss(name: str) -> LossSpec:
    """The registered loss ``name`` (see :data:`LOSSES`)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name]


def loss_names(program: str) -> list[str]:
    """The losses the ``program`` (``sft`` or ``rl``) trains, sorted."""
    if program not in PROGRAMS:
        raise ValueError(f"program must be one of {PROGRAMS}, got {program!r}")
    return sorted(name for name, spec in LOSSES.items() if spec.program == program)


def knob_names(program: str) -> tuple[str, ...]:
    """Every config field of the ``program``'s losses, in registry order: the knobs a program
    section (``sft.*`` / ``rl.*``) may set."""
    names = [f.name for n in loss_names(program) for f in dataclasses.fields(LOSSES[n].config)]
    return tuple(dict.fromkeys(names))


def config_for(program: str, name: str, knobs: Mapping[str, Any]) -> Any:
    """The config of loss ``name`` for a program section (``sft.*`` or ``rl.*``).

    Args:
      program: ``sft`` or ``rl`` (also the section name in messages).
      name: the loss.
      knobs: the section's loss knobs; those that are not None override the published
        defaults, a None knob takes the default.

    Raises:
      ValueError: ``name`` is not a loss of ``program``, a set knob is not a field of its
        config, or a value is invalid.
    """
    names = loss_names(program)
    if name not in names:
        raise ValueError(f"{program}.loss must be one of {names}, got {name!r}")
    fields = {f.name for f in dataclasses.fields(LOSSES[name].config)}
    unused = [k for k, v in knobs.items() if v is not None and k not in fields]
    if unused:
        own = [k for k in knobs if k in fields]
        raise ValueError(f"{program}.{unused[0]} does not apply to loss {name!r} (its knobs: "
                         f"{', '.join(own) or 'none'})")
    return LOSSES[name].config(**{k: v for k, v in knobs.items() if v is not None})


def resolved_knobs(cfg: Any, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Each knob's value in the loss config ``cfg`` (None for knobs it does not have)."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    return {k: getattr(cfg, k) if k in fields else None for k in knobs}
