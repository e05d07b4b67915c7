"""The RL loop: rollouts with trajectories, rewards, advantages, state selection, policy loss.

One RL step: G completions per prompt from the configured sampler (recording trajectories),
rewards from a host function, group advantages, then the training batch of trajectory states:
- ``tracerl`` (+ a selector: ``uniform`` is TraceRL's grouping, ``atpo`` ATPO's hybrid rule,
  or ``random``/``entropy``/``roec``/``cm``) with a budget of K states per rollout;
- ``agdo_rl``: states follow AGDO's attention order (one last-layer attention pass on each
  completed rollout), per-token advantages ``A + sign(A) delta I_k``;
- ``diffu_grpo``: d1's one-step estimator (completion fully masked, prompt masked at 15%).
The optimiser update runs through the sharded train step; the loop is driven by
:class:`dllm_jax.train.Trainer`, so checkpoints, resume, progress and metrics are shared with
SFT. Old log-probs are taken once per RL step (``mu`` inner iterations reuse the batch).
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

LOSSES = ("tracerl", "agdo_rl", "diffu_grpo")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLConfig:
    """Knobs of one RL run (the optimiser lives in ``TrainConfig.optim``).

    Attributes:
      prompts_per_step, group_size: rollouts per step = prompts * G.
      loss: ``tracerl`` | ``agdo_rl`` | ``diffu_grpo``.
      selector: for ``tracerl``: ``uniform`` | ``random`` | ``entropy`` | ``roec`` | ``cm`` |
        ``atpo``.
      budget: K trajectory states per rollout (the same for every selector).
      lam, rho: ATPO's hybrid weight and optional coverage mix.
      inner_iterations: ``mu`` optimiser steps per batch of rollouts.
      eps, beta: PPO clip and KL weight (``beta > 0`` keeps a frozen reference model, synced
        every ``ref_sync_every`` RL steps; 0 = never).
      delta, n_per_step: AGDO's advantage boost and tokens per attention-order step.
      advantage: ``zscore`` or ``center``.
      sampler: rollout sampler (temperature > 0 for exploration).
    """

    prompts_per_step: int = 8
    group_size: int = 8
    loss: str = "tracerl"
    selector: str = "uniform"
    budget: int = 4
    lam: float = 0.5
    rho: float | None = None
    inner_iterations: int = 1
    eps: float = 0.2
    beta: float = 0.0
    ref_sync_every: int = 0
    delta: float = 5.0
    n_per_step: int = 1
    advantage: str = "zscore"
    p_mask_prompt: float = 0.15
    sampler: LLaDAConfig = LLaDAConfig(steps=8, gen_length=8, block_length=8, temperature=1.0)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"rl.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss == "tracerl":
            obj.get_selector(self.selector)
        if self.prompts_per_step < 1 or self.group_size < 2:
            raise ValueError("rl.prompts_per_step must be >= 1 and rl.group_size >= 2")
        if self.budget < 1 or self.budget > self.sampler.steps:
            raise ValueError(f"rl.budget must be in [1, sampler.steps={self.sampler.steps}], "
                             f"got {self.budget}")
        if self.inner_iterations < 1:
            raise ValueError("rl.inner_iterations must be >= 1")


def _selector(cfg: RLConfig):
    kw = {"lam": cfg.lam, "rho": cfg.rho} if cfg.selector == "atpo" else {}
    return obj.get_selector(cfg.selector, **kw)


class RolloutBatcher:
    """``batch_fn(step)`` for the Trainer: rolls out with the trainer's current parameters.

    Args:
      cfg: the RL config.
      prompt_fn: ``rl_step -> int array [prompts_per_step, P]`` (fixed P).
      reward_fn: ``(rl_step, completions [R, G_len] ints) -> rewards [R]`` on the host.
      seed: base seed of rollouts and state selection.
    """

    def __init__(self, cfg: RLConfig, prompt_fn: Callable[[int], np.ndarray],
                 reward_fn: Callable[[int, np.ndarray], np.ndarray], seed: int = 0):
        self.cfg = cfg
        self.prompt_fn = prompt_fn
        self.reward_fn = reward_fn
        self.key = jax.random.PRNGKey(seed)
        self.trainer = None  # set by attach()
        self.ref_params = None
        self.last_rewards: np.ndarray | None = None
        self._cache: dict[int, dict] = {}

    def attach(self, trainer) -> RolloutBatcher:
        """Binds the trainer whose current parameters roll out; with ``beta > 0`` the frozen
        reference parameters are checkpointed with the train state, so resume is exact."""
        self.trainer = trainer
        if self.cfg.beta > 0:
            self.ref_params = jax.tree.map(jnp.copy, trainer.model_params())

            def set_ref(tree):
                self.ref_params = tree

            trainer.register_checkpoint_extra(lambda: self.ref_params, set_ref)
        return self

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        rl_step = step // cfg.inner_iterations
        if rl_step not in self._cache:  # mu inner iterations reuse the same rollouts
            self._cache = {rl_step: self._build(rl_step)}
        return self._cache[rl_step]

    def _build(self, rl_step: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        params = host_local(self.trainer.model_params())
        model = nnx.merge(self.trainer.graphdef, nnx.State(params))
        if cfg.beta > 0 and cfg.ref_sync_every and rl_step and rl_step % cfg.ref_sync_every == 0:
            self.ref_params = jax.tree.map(jnp.copy, self.trainer.model_params())
        prompts = np.asarray(self.prompt_fn(rl_step), np.int32)
        p_len = prompts.shape[1]
        rollout_prompts = np.repeat(prompts, cfg.group_size, axis=0)
        key = jax.random.fold_in(self.key, rl_step)
        out = generate(model, rollout_prompts, config=cfg.sampler, key=key, record=True)
        seqs = np.asarray(out.sequences)
        rewards = np.asarray(self.reward_fn(rl_step, seqs[:, p_len:]), np.float32)
        self.last_rewards = rewards
        adv = np.asarray(obj.group_advantages(jnp.asarray(rewards), cfg.group_size,
                                              cfg.advantage))
        graphdef = nnx.graphdef(model)
        ref = host_local(self.ref_params) if cfg.beta > 0 else None
        batch = _states(graphdef, params, ref, jnp.asarray(seqs), out.trajectory,
                        jnp.asarray(adv), jnp.asarray(rewards), jax.random.fold_in(key, 1),
                        cfg=cfg, p_len=p_len)
        return jax.device_get(batch)


def host_local(tree):
    """The full parameters on this host. With several processes the rollouts run on a
    host-local replica (identical on every host: same parameters, same keys), and the global
    batch they produce is split across hosts by the train step's batch sharding."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return jax.tree.map(jnp.asarray, multihost_utils.process_allgather(tree, tiled=True))


@functools.partial(jax.jit, static_argnums=0)
def _old_logp(graphdef, params, inputs, tokens):
    model = nnx.merge(graphdef, nnx.State(params))
    return obj.token_logprobs(obj.aligned(model, inputs), tokens)


def _states(graphdef, params, ref_params, seqs, traj, adv_R, rewards_R, key, *, cfg: RLConfig,
            p_len: int) -> dict[str, jax.Array]:
    """The training batch of states (host-called; each piece is jitted)."""
    model = nnx.merge(graphdef, nnx.State(params))
    mask_id = model.config.mask_token_id
    r, length = seqs.shape
    g = length - p_len
    k = cfg.budget
    extra: dict[str, jax.Array] = {}
    if cfg.loss == "diffu_grpo":
        resp = jnp.zeros((r, length), bool).at[:, p_len:].set(True)
        eos = model.config.eos_token_id
        comp = resp.astype(jnp.float32)
        if eos is not None:
            comp = comp.at[:, p_len:].set(obj.completion_mask_until_eos(seqs[:, p_len:], eos))
        inputs, _ = obj.d1_inputs(key, seqs, ~resp, resp, cfg.p_mask_prompt, mask_id)
        batch = {"inputs": inputs, "tokens": seqs, "targets": comp, "adv": adv_R,
                 "reward": rewards_R}
    else:
        if cfg.loss == "agdo_rl":
            order, infl = _agdo_order(graphdef, params, seqs, p_len, cfg.n_per_step)
            num_order_steps = -(-g // cfg.n_per_step)
            bounds = [round(i * num_order_steps / k) for i in range(k + 1)]
            starts = jnp.broadcast_to(jnp.asarray(bounds[:-1], jnp.int32), (r, k))
            ends = jnp.broadcast_to(jnp.asarray(bounds[1:], jnp.int32), (r, k))
            step_map = order
            extra["influence"] = jnp.repeat(infl, k, axis=0)
        else:
            sel = _selector(cfg)
            starts, ends = sel(key, traj.entropy, traj.margin, traj.roec, k,
                               group_size=cfg.group_size)
            step_map = traj.step_map
        masked, targets = obj.states_from_steps(step_map, starts, ends)
        sb = obj.state_batch(seqs, p_len, masked, targets, mask_id)
        batch = {"inputs": sb["inputs"], "tokens": sb["tokens"],
                 "targets": sb["targets"].astype(jnp.float32),
                 "adv": jnp.repeat(adv_R, k), "reward": jnp.repeat(rewards_R, k), **extra}
    batch["old_logp"] = _old_logp(graphdef, params, batch["inputs"], batch["tokens"])
    if ref_params is not None:
        batch["ref_logp"] = _old_logp(graphdef, ref_params, batch["inputs"], batch["tokens"])
    return batch


@functools.partial(jax.jit, static_argnums=(0, 3))
def _agdo_order_jit(graphdef, params, seqs, n_per_step, resp):
    model = nnx.merge(graphdef, nnx.State(params))
    _, aux = model.with_attention(seqs, None, attn_mean=True)
    order = obj.attention_order(aux["attn_mean"], ~resp, resp, n_per_step)
    return order, aux["I"]


def _agdo_order(graphdef, params, seqs, p_len: int, n_per_step: int):
    r, length = seqs.shape
    resp = jnp.zeros((r, length), bool).at[:, p_len:].set(True)
    order, infl = _agdo_order_jit(graphdef, params, seqs, n_per_step, resp)
    return order[:, p_len:], infl


def make_rl_loss(cfg: RLConfig, num_rollouts: int):
    """``loss_fn(model, batch, key)`` for the train step."""

    def loss_fn(model, batch, key):
        logp = obj.token_logprobs(obj.aligned(model, batch["inputs"]), batch["tokens"])
        ref = batch.get("ref_logp")
        if cfg.loss == "diffu_grpo":
            loss, aux = obj.diffu_grpo_loss(logp, batch["old_logp"], ref, batch["adv"],
                                            batch["targets"], eps=cfg.eps, beta=cfg.beta)
        elif cfg.loss == "agdo_rl":
            loss, aux = obj.agdo_rl_loss(logp, batch["old_logp"], ref, batch["adv"],
                                         batch["influence"], batch["targets"], num_rollouts,
                                         delta=cfg.delta, eps=cfg.eps, beta=cfg.beta)
        else:
            loss, aux = obj.tracerl_loss(logp, batch["old_logp"], ref, batch["adv"],
                                         batch["targets"], num_rollouts, eps=cfg.eps,
                                         beta=cfg.beta)
        return loss, {**aux, "reward": batch["reward"].mean()}

    return loss_fn
