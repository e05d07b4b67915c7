"""The RL loop: rollouts with trajectories, rewards, advantages, the loss's rows, policy loss.

One RL step: G completions per prompt from the configured sampler (recording trajectories),
rewards from a host function, group advantages, then the rows of the loss chosen by
``rl.loss`` from the loss registry (``dllm_jax.objectives.registry``), which says how to build
them: trajectory states picked by ``rl.selector`` (``tracerl``), states following the
attention-guided order the rollouts were decoded in (``agdo_rl``), or d1's one-step inputs
(``diffu_grpo``, ``wd1``). The optimiser update runs through the sharded train step; the loop
is driven by :class:`dllm_jax.train.Trainer`, so checkpoints, resume, progress and metrics are
shared with SFT. The ``mu`` inner iterations of an RL step reuse its rollouts; d1's one-step
rows are redrawn per inner iteration (a fresh prompt mask each), every draw scored under the
rollout policy when the rollouts are made, as d1 does. Left-padded prompts keep their
attention mask through rollouts, scoring and the loss.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax import objectives as obj
from dllm_jax.sampling import LLaDAConfig, generate

# RLConfig fields that are knobs of the losses' configs (None: the loss's published default).
LOSS_KNOBS = ("eps", "beta", "delta", "n_per_step", "advantage", "p_mask_prompt",
              "inner_iterations")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLConfig:
    """Knobs of one RL run (the optimiser lives in ``TrainConfig.optim``).

    Every loss knob left None takes the chosen loss's published default from the registry
    (:meth:`resolved` fills them in; docs/objectives.md lists them); setting a knob the loss
    does not have is an error.

    Attributes:
      prompts_per_step, group_size: rollouts per step = prompts * G.
      loss: an RL loss of the registry: ``tracerl`` | ``agdo_rl`` | ``diffu_grpo`` | ``wd1``.
      selector: for losses over selected states (``tracerl``): ``uniform`` (default) |
        ``random`` | ``entropy`` | ``roec`` | ``cm`` | ``atpo``.
      budget: K trajectory states per rollout (the same for every selector; default
        ``ceil(T / shrinkage)`` of the loss); only for losses over states.
      lam, rho: ATPO's hybrid weight and optional coverage mix.
      inner_iterations: ``mu`` optimiser steps per batch of rollouts.
      eps, beta: PPO clip and KL weight (``beta > 0`` keeps a frozen reference model, synced
        every ``ref_sync_every`` RL steps; 0 = never).
      delta, n_per_step: AGDO's advantage boost and tokens per attention-order step (AGDO-RL
        rolls out in that order, so ``n_per_step`` must be the sampler's tokens per step).
      advantage: ``zscore`` or ``center``.
      p_mask_prompt: prompt masking rate of d1's one-step estimator.
      sampler: rollout sampler (temperature > 0 for exploration); a loss that fixes the
        decoding order replaces its rule (AGDO-RL: ``max_s``, see :meth:`resolved`).
    """

    prompts_per_step: int = 8
    group_size: int = 8
    loss: str = "tracerl"
    selector: str | None = None
    budget: int | None = None
    lam: float = 0.5
    rho: float | None = None
    inner_iterations: int | None = None
    eps: float | None = None
    beta: float | None = None
    ref_sync_every: int = 0
    delta: float | None = None
    n_per_step: int | None = None
    advantage: str | None = None
    p_mask_prompt: float | None = None
    sampler: LLaDAConfig = LLaDAConfig(steps=8, gen_length=8, block_length=8, temperature=1.0)

    def __post_init__(self):
        cfg = self.loss_config()  # checks the loss name and the knobs
        spec = obj.get_loss(self.loss)
        if self.budget is not None and spec.state_steps is None:
            raise ValueError(f"rl.budget does not apply to loss {self.loss!r} (one row per "
                             "rollout)")
        if self.selector is not None:
            if not spec.selector:
                raise ValueError(f"rl.selector does not apply to loss {self.loss!r}")
            obj.get_selector(self.selector)
        if self.prompts_per_step < 1 or self.group_size < 2:
            raise ValueError("rl.prompts_per_step must be >= 1 and rl.group_size >= 2")
        if self.budget is not None:
            most = spec.state_steps(cfg, self.sampler.steps, self.sampler.gen_length)
            if not 1 <= self.budget <= most:
                raise ValueError(f"rl.budget must be in [1, {most}] (the steps loss "
                                 f"{self.loss!r} draws states from), got {self.budget}")

    def knobs(self) -> dict:
        return {k: getattr(self, k) for k in LOSS_KNOBS}

    def loss_config(self):
        """The loss's config: the knobs that are set over its published defaults."""
        return obj.config_for("rl", self.loss, self.knobs())

    def resolved(self) -> RLConfig:
        """This config with the loss's knobs, the budget, the selector and the rollout
        sampler filled in (what a run uses and prints); idempotent.

        Raises:
          ConfigError: the sampler does not fit the loss's decoding order (AGDO-RL:
            ``n_per_step`` tokens per step).
        """
        spec = obj.get_loss(self.loss)
        cfg = self.loss_config()
        budget, selector, sampler = self.budget, self.selector, self.sampler
        if spec.state_steps is not None and budget is None:
            budget = spec.default_budget(cfg, sampler.steps, sampler.gen_length)
        if spec.selector and selector is None:
            selector = "uniform"
        if spec.rollout_sampler is not None:
            sampler = spec.rollout_sampler(sampler, cfg)
        return dataclasses.replace(self, budget=budget, selector=selector, sampler=sampler,
                                   **obj.resolved_knobs(cfg, self.knobs()))

    @property
    def rows_per_rollout(self) -> int:
        """Training rows per rollout: K states, or 1 for one-step losses."""
        return self.resolved().budget or 1

    @property
    def keeps_reference(self) -> bool:
        """Whether the loss has a KL term, i.e. a frozen reference model (``beta > 0``)."""
        return (self.resolved().beta or 0.0) > 0


def _selector(cfg: RLConfig):
    kw = {"lam": cfg.lam, "rho": cfg.rho} if cfg.selector == "atpo" else {}
    return obj.get_selector(cfg.selector, **kw)


class RolloutBatcher:
    """``batch_fn(step)`` for the Trainer: rolls out with the trainer's current parameters.

    RL step ``s = step // mu`` rolls out once, with key ``fold_in(PRNGKey(seed), s)``; its
    ``mu`` inner iterations reuse the rollouts. For losses whose rows are redrawn
    (``LossSpec.redraw``: d1's one-step estimator) inner iteration ``i`` gets rows drawn with
    ``fold_in(key, 1 + i)``, all scored (old and reference log-probs) under the rollout
    policy when the rollouts are made; other losses build one set of rows with
    ``fold_in(key, 1)``. Every row carries the attention mask (0 on prompt padding).

    Args:
      cfg: the RL config (resolved here).
      prompt_fn: ``rl_step -> int array [prompts_per_step, P]`` (fixed P, left-padded).
      reward_fn: ``(rl_step, completions [R, G_len] ints) -> rewards [R]`` on the host; the
        completions are exactly what the sampler committed (cut them at EOS to decode).
      seed: base seed of rollouts and state selection.
      prompt_mask_fn: ``rl_step -> 0/1 array [prompts_per_step, P]``, 0 on the prompts' left
        padding; None: no padding.
    """

    def __init__(self, cfg: RLConfig, prompt_fn: Callable[[int], np.ndarray],
                 reward_fn: Callable[[int, np.ndarray], np.ndarray], seed: int = 0, *,
                 prompt_mask_fn: Callable[[int], np.ndarray] | None = None):
        self.cfg = cfg.resolved()
        self.spec = obj.get_loss(self.cfg.loss)
        self.prompt_fn = prompt_fn
        self.prompt_mask_fn = prompt_mask_fn
        self.reward_fn = reward_fn
        self.key = jax.random.PRNGKey(seed)
        self.trainer = None  # set by attach()
        self.ref_params = None
        self.last_rewards: np.ndarray | None = None
        self._cache: dict[int, list[dict]] = {}

    def attach(self, trainer) -> RolloutBatcher:
        """Binds the trainer whose current parameters roll out; with ``beta > 0`` the frozen
        reference parameters are checkpointed with the train state, so resume is exact."""
        self.trainer = trainer
        if self.cfg.keeps_reference:
            self.ref_params = jax.tree.map(jnp.copy, trainer.model_params())

            def set_ref(tree):
                self.ref_params = tree

            trainer.register_checkpoint_extra(lambda: self.ref_params, set_ref)
        return self

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        rl_step, inner = divmod(step, self.cfg.inner_iterations)
        if rl_step not in self._cache:  # the mu inner iterations reuse the same rollouts
            self._cache = {rl_step: self._build(rl_step)}
        rows = self._cache[rl_step]
        return rows[inner] if self.spec.redraw else rows[0]

    def _build(self, rl_step: int) -> list[dict[str, np.ndarray]]:
        """The rows of every inner iteration of RL step ``rl_step`` (one set unless the loss
        redraws them)."""
        cfg = self.cfg
        key = jax.random.fold_in(self.key, rl_step)
        rollouts = self._rollouts(rl_step, key)
        draws = cfg.inner_iterations if self.spec.redraw else 1
        return [jax.device_get(self.spec.rows(
            dataclasses.replace(rollouts, key=jax.random.fold_in(key, 1 + i)),
            cfg.loss_config())) for i in range(draws)]

    def _rollouts(self, rl_step: int, key: jax.Array) -> obj.Rollouts:
        """G rollouts per prompt of RL step ``rl_step`` under the current parameters, with
        their rewards, advantages and scoring callbacks (``key`` draws the rollouts)."""
        cfg = self.cfg
        params = host_local(self.trainer.model_params())
        model = nnx.merge(self.trainer.graphdef, nnx.State(params))
        if (cfg.keeps_reference and cfg.ref_sync_every and rl_step
                and rl_step % cfg.ref_sync_every == 0):
            self.ref_params = jax.tree.map(jnp.copy, self.trainer.model_params())
        prompts = np.asarray(self.prompt_fn(rl_step), np.int32)
        pmask = (np.ones_like(prompts) if self.prompt_mask_fn is None
                 else np.asarray(self.prompt_mask_fn(rl_step), np.int32))
        p_len = prompts.shape[1]
        pmask = np.repeat(pmask, cfg.group_size, axis=0)
        out = generate(model, np.repeat(prompts, cfg.group_size, axis=0), pmask,
                       config=cfg.sampler, key=key, record=True)
        seqs = jnp.asarray(out.sequences)
        amask = jnp.asarray(np.concatenate(
            [pmask, np.ones((len(pmask), seqs.shape[1] - p_len), np.int32)], axis=1))
        rewards = np.asarray(self.reward_fn(rl_step, np.asarray(seqs)[:, p_len:]), np.float32)
        self.last_rewards = rewards
        graphdef = nnx.graphdef(model)
        ref = host_local(self.ref_params) if cfg.keeps_reference else None
        traj = out.trajectory
        return obj.Rollouts(
            sequences_RL=seqs, attention_mask_RL=amask, prompt_length=p_len,
            group_size=cfg.group_size,
            advantages_R=obj.group_advantages(jnp.asarray(rewards), cfg.group_size,
                                              cfg.advantage),
            rewards_R=jnp.asarray(rewards), key=jax.random.fold_in(key, 1),
            mask_id=model.config.mask_token_id, eos_id=model.config.eos_token_id,
            budget=cfg.budget, step_map_RG=traj.step_map, entropy_RT=traj.entropy,
            margin_RT=traj.margin, roec_RT=traj.roec, valid_RT=traj.valid,
            select=_selector(cfg) if cfg.selector is not None else None,
            influence=functools.partial(_influence, graphdef, params, seqs, amask),
            score=functools.partial(_old_logp, graphdef, params),
            score_ref=None if ref is None else functools.partial(_old_logp, graphdef, ref))


def host_local(tree):
    """The full parameters on this host. With several processes the rollouts run on a
    host-local replica (identical on every host: same parameters, same keys), and the global
    batch they produce is split across hosts by the train step's batch sharding."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return jax.tree.map(jnp.asarray, multihost_utils.process_allgather(tree, tiled=True))


@functools.partial(jax.jit, static_argnums=0)
def _old_logp(graphdef, params, inputs, tokens, attention_mask):
    model = nnx.merge(graphdef, nnx.State(params))
    return obj.token_logprobs(obj.aligned(model, inputs, attention_mask), tokens)


@functools.partial(jax.jit, static_argnums=0)
def _influence(graphdef, params, seqs, attention_mask):
    """AGDO's ``I_k`` ``[R, L]`` from one last-layer attention pass on the rollouts."""
    model = nnx.merge(graphdef, nnx.State(params))
    return model.with_attention(seqs, attention_mask)[1]["I"]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _agdo_order_jit(graphdef, params, seqs, n_per_step, resp):
    model = nnx.merge(graphdef, nnx.State(params))
    _, aux = model.with_attention(seqs, None, attn_mean=True)
    order = obj.attention_order(aux["attn_mean"], ~resp, resp, n_per_step)
    return order, aux["I"]


def agdo_order(graphdef, params, seqs, p_len: int, n_per_step: int):
    """AGDO's attention order of the generated positions ``[B, L - p_len]`` and the influence
    ``I_k`` ``[B, L]``, from one last-layer attention pass of the model on ``seqs``."""
    r, length = seqs.shape
    resp = jnp.zeros((r, length), bool).at[:, p_len:].set(True)
    order, infl = _agdo_order_jit(graphdef, params, seqs, n_per_step, resp)
    return order[:, p_len:], infl


def make_rl_loss(cfg: RLConfig, num_rollouts: int):
    """``loss_fn(model, batch, key)`` for the train step: the registry loss of ``cfg.loss``.

    Args:
      cfg: the RL config (resolved here).
      num_rollouts: rollouts per RL step (``prompts_per_step * group_size``).

    With gradient accumulation the train step averages the micro-batches' losses, so each
    micro-batch's trajectory loss is taken over the rollouts it holds (its share of the step's
    rows): the accumulated gradient then equals the full batch's. The rows carry every random
    draw (d1's prompt masks are drawn with the rollouts), so the step's key is not used; the
    rows' attention mask keeps prompt padding out of the forward pass.
    """
    cfg = cfg.resolved()
    if num_rollouts != cfg.prompts_per_step * cfg.group_size:
        raise ValueError(f"num_rollouts {num_rollouts} is not prompts_per_step * group_size = "
                         f"{cfg.prompts_per_step * cfg.group_size}")
    spec = obj.get_loss(cfg.loss)
    loss_cfg = cfg.loss_config()
    rows_per_step = num_rollouts * cfg.rows_per_rollout

    def loss_fn(model, batch, key):
        logp = obj.token_logprobs(
            obj.aligned(model, batch["inputs"], batch["attention_mask"]), batch["tokens"])
        share = batch["inputs"].shape[0] / rows_per_step
        loss, aux = spec.loss(loss_cfg, logp, batch, num_rollouts=num_rollouts * share,
                              group_size=cfg.group_size)
        return loss, {**aux, "reward": batch["reward"].mean()}

    return loss_fn
