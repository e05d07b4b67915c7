"""RL rollouts: one RL step's completions with their trajectories, rewards, advantages and
the loss's rows, built on the devices.

One RL step: G completions per prompt from the configured sampler (recording trajectories),
rewards from a host function, group advantages, then the rows of the loss chosen by
``rl.loss`` from the loss registry (``dllm_jax.objectives.registry``), which says how to build
them: trajectory states picked by ``rl.selector`` (``tracerl``), states following the
attention-guided order the rollouts were decoded in (``agdo_rl``), or d1's one-step inputs
(``diffu_grpo``, ``wd1``). The ``mu`` inner iterations of an RL step reuse its rollouts; d1's
one-step rows are redrawn per inner iteration (a fresh prompt mask each), every draw scored
under the rollout policy when the rollouts are made, as d1 does. Left-padded prompts keep
their attention mask through rollouts, scoring and the loss. The arrays stay on the devices
with the train mesh's shardings from the rollouts to the update; only the completions a
process's rewards need go to its host (docs/training.md, "RL step: what runs where").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from dllm_jax import objectives as obj
from dllm_jax.errors import ConfigError
from dllm_jax.model import sharding as shd
from dllm_jax.programs.config import RLConfig
from dllm_jax.programs.datasources import DataSource
from dllm_jax.sampling import generate
from dllm_jax.train import step as st


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

    Everything stays on the devices, sharded like the train step (docs/training.md, "RL
    step"): the rollouts run under the trainer's mesh on the parameters as trained, only each
    process's own completions come to the host for their rewards, and the rows come back
    already split over the batch axes. The frozen reference is a copy of the trained
    parameters with their shardings (with LoRA only the adapters: the base is shared).

    Args:
      cfg: the resolved RL config.
      prompt_fn: ``rl_step -> int array [prompts_per_step, P]`` (fixed P, left-padded); every
        process returns the same prompts.
      reward_fn: ``(rl_step, rollouts [n] ints, completions [n, G_len] ints) -> rewards [n]``
        on the host, for the rollouts this process holds: ``rollouts`` are their indices in
        the step (rollout ``r`` answers prompt ``r // group_size``), the completions exactly
        what the sampler committed (cut them at EOS to decode).
      seed: base seed of rollouts and state selection.
      prompt_mask_fn: ``rl_step -> 0/1 array [prompts_per_step, P]``, 0 on the prompts' left
        padding; None: no padding.
    """

    def __init__(self, cfg: RLConfig, prompt_fn: Callable[[int], np.ndarray],
                 reward_fn: Callable[[int, np.ndarray, np.ndarray], np.ndarray], seed: int = 0,
                 *, prompt_mask_fn: Callable[[int], np.ndarray] | None = None):
        self.cfg = cfg.check_resolved()
        self.spec = obj.get_loss(self.cfg.loss)
        self.prompt_fn = prompt_fn
        self.prompt_mask_fn = prompt_mask_fn
        self.reward_fn = reward_fn
        self.key = jax.random.PRNGKey(seed)
        self.trainer = None  # set by attach()
        self.plan: RowPlan | None = None
        self.ref_params = None
        self._cache: dict[int, list[dict]] = {}

    def attach(self, trainer) -> RolloutBatcher:
        """Binds the trainer whose current parameters roll out; with ``beta > 0`` the frozen
        reference parameters are checkpointed with the train state, so resume is exact.

        Raises:
          ConfigError: the rows of one RL step do not split evenly over the mesh's batch axes.
        """
        cfg, mesh = self.cfg, trainer.mesh
        rows = cfg.prompts_per_step * cfg.group_size * cfg.rows_per_rollout
        if mesh is not None and rows % (mesh.shape["data"] * mesh.shape["fsdp"]):
            raise ConfigError(
                f"an RL step's {rows} rows (rl.prompts_per_step x rl.group_size x rows per "
                f"rollout) must be divisible by the mesh's data x fsdp = "
                f"{mesh.shape['data'] * mesh.shape['fsdp']}")
        self.trainer = trainer
        model_cfg = trainer.model.config
        self.plan = RowPlan(
            graphdef=trainer.graphdef, params_fn=trainer.params_fn, spec=self.spec,
            loss_cfg=cfg.loss_config(), select=_selector(cfg) if cfg.selector else None,
            group_size=cfg.group_size, advantage=cfg.advantage, budget=cfg.budget,
            draws=cfg.inner_iterations if self.spec.redraw else 1,
            mask_id=model_cfg.mask_token_id, eos_id=model_cfg.eos_token_id, mesh=mesh)
        if cfg.keeps_reference:
            self.ref_params = self._reference()

            def set_ref(tree):
                self.ref_params = tree

            trainer.register_checkpoint_extra(lambda: self.ref_params, set_ref)
        return self

    def __call__(self, step: int) -> dict[str, jax.Array]:
        rl_step, inner = divmod(step, self.cfg.inner_iterations)
        if rl_step not in self._cache:  # the mu inner iterations reuse the same rollouts
            self._cache = {rl_step: self._build(rl_step)}
        rows = self._cache[rl_step]
        return rows[inner] if self.spec.redraw else rows[0]

    def _reference(self):
        """A copy of the trained parameters (LoRA: of the adapters), keeping their shardings."""
        params = self.trainer.state["params"]
        return jax.tree.map(jnp.copy, params["lora"] if self._lora else params)

    @property
    def _lora(self) -> bool:
        return self.trainer.config.lora.enabled

    def _reference_params(self):
        """The reference policy's train parameters (LoRA: the shared base, its adapters)."""
        if self.ref_params is None or not self._lora:
            return self.ref_params
        return {"base": self.trainer.state["params"]["base"], "lora": self.ref_params}

    def _build(self, rl_step: int) -> list[dict[str, jax.Array]]:
        """The rows of every inner iteration of RL step ``rl_step`` (one set unless the loss
        redraws them), on the devices, split over the batch axes."""
        cfg = self.cfg
        key = jax.random.fold_in(self.key, rl_step)
        if (cfg.keeps_reference and cfg.ref_sync_every and rl_step
                and rl_step % cfg.ref_sync_every == 0):
            self.ref_params = self._reference()
        rollouts = self._rollouts(rl_step, key)
        return _rows(self.trainer.state["params"], self._reference_params(), rollouts, key,
                     plan=self.plan)

    def _rollouts(self, rl_step: int, key: jax.Array) -> dict[str, jax.Array]:
        """G rollouts per prompt of RL step ``rl_step`` under the current parameters (``key``
        draws them) with their record and rewards, as global arrays split over rows."""
        cfg, mesh = self.cfg, self.trainer.mesh
        prompts = np.asarray(self.prompt_fn(rl_step), np.int32)
        pmask = (np.ones_like(prompts) if self.prompt_mask_fn is None
                 else np.asarray(self.prompt_mask_fn(rl_step), np.int32))
        ids, pmask = (np.repeat(x, cfg.group_size, axis=0) for x in (prompts, pmask))
        out = generate(self.trainer.model, ids, pmask, config=cfg.sampler, key=key, record=True,
                       mesh=mesh)
        # This process's rollouts only, and of them only the completions, come to the host.
        rows, comp = shd.local_rows(out.sequences, slice(prompts.shape[1], None))
        rewards = np.asarray(self.reward_fn(rl_step, rows, comp), np.float32)
        if rewards.shape != (len(comp),):
            raise ValueError(f"reward_fn returned shape {rewards.shape} for {len(comp)} "
                             "completions")
        traj = out.trajectory
        return {"sequences": out.sequences,
                "prompt_mask": jnp.asarray(pmask) if mesh is None else shd.put_rows(pmask, mesh),
                "rewards": shd.from_local_rows(rewards, rows, out.sequences),
                "step_map": traj.step_map, "entropy": traj.entropy, "margin": traj.margin,
                "roec": traj.roec, "valid": traj.valid}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RowPlan:
    """The static half of building an RL step's rows (what :func:`_rows` compiles for).

    Attributes:
      graphdef / params_fn: the model's graph and the map from train parameters to model
        parameters (LoRA's merge; None: the same).
      spec / loss_cfg: the registry loss and its config; ``select`` its state selector.
      group_size, advantage, budget: as in :class:`RLConfig`.
      draws: row sets to build (the inner iterations of a loss that redraws its rows, else 1).
      mask_id / eos_id: the model's MASK and EOS ids.
      mesh: the train mesh (None: single device).
    """

    graphdef: nnx.GraphDef
    params_fn: Callable | None
    spec: obj.LossSpec
    loss_cfg: object
    select: object
    group_size: int
    advantage: str
    budget: int | None
    draws: int
    mask_id: int
    eos_id: int | None
    mesh: Mesh | None

    def model(self, params) -> nnx.Module:
        p = params if self.params_fn is None else self.params_fn(params)
        return nnx.merge(self.graphdef, nnx.State(p))


def _logp(model, inputs, tokens, attention_mask):
    return obj.token_logprobs(obj.aligned(model, inputs, attention_mask), tokens)


@functools.partial(jax.jit, static_argnames="plan")
def _rows(params, ref_params, rollouts: dict[str, jax.Array], key: jax.Array, *,
          plan: RowPlan) -> list[dict[str, jax.Array]]:
    """Advantages, the loss's rows and their old (and reference) log-probs, in one program.

    Args:
      params / ref_params: the train parameters of the rollout policy and of the reference
        (None without one).
      rollouts: ``_rollouts``'s arrays: ``sequences [R, L]``, ``prompt_mask [R, P]``,
        ``rewards [R]`` and the record (``step_map``, ``entropy``, ``margin``, ``roec``,
        ``valid``).
      key: the RL step's key (the rows of draw ``i`` use ``fold_in(key, 1 + i)``).
    """
    seqs, pmask = rollouts["sequences"], rollouts["prompt_mask"]
    r, length = seqs.shape
    p = pmask.shape[1]
    amask = jnp.concatenate([pmask, jnp.ones((r, length - p), pmask.dtype)], axis=1)
    model = plan.model(params)
    ref = None if ref_params is None else plan.model(ref_params)
    rewards = rollouts["rewards"]
    with shd.use_mesh(plan.mesh):
        base = obj.Rollouts(
            sequences_RL=seqs, attention_mask_RL=amask, prompt_length=p,
            group_size=plan.group_size,
            advantages_R=obj.group_advantages(rewards, plan.group_size, plan.advantage),
            rewards_R=rewards, key=jax.random.fold_in(key, 1), mask_id=plan.mask_id,
            eos_id=plan.eos_id, budget=plan.budget, step_map_RG=rollouts["step_map"],
            entropy_RT=rollouts["entropy"], margin_RT=rollouts["margin"],
            roec_RT=rollouts["roec"], valid_RT=rollouts["valid"], select=plan.select,
            influence=lambda: model.with_attention(seqs, amask)[1]["I"],
            score=functools.partial(_logp, model),
            score_ref=None if ref is None else functools.partial(_logp, ref))
        draws = [plan.spec.rows(dataclasses.replace(base, key=jax.random.fold_in(key, 1 + i)),
                                plan.loss_cfg) for i in range(plan.draws)]
    # 1 on every row of a rollout whose group's rewards are all equal (no learning signal).
    flat = rewards.reshape(-1, plan.group_size)
    zero_var_R = jnp.repeat((flat.max(-1) == flat.min(-1)).astype(jnp.float32), plan.group_size)
    draws = [{**d, "zero_var": jnp.repeat(zero_var_R, d["adv"].shape[0] // r)} for d in draws]
    if plan.mesh is None:
        return draws
    batch = st.batch_sharding(plan.mesh)
    return [{k: jax.lax.with_sharding_constraint(v, batch) for k, v in d.items()} for d in draws]



def rollout_batcher(rl: RLConfig, source: DataSource, seed: int) -> RolloutBatcher:
    """The RL program's rollouts from ``source``: ``rl.prompts_per_step`` distinct prompts per
    RL step (a pure function of the seed and the step) with their attention masks, G rollouts
    each, scored by the source's rewards. Call ``attach(trainer)`` before use."""

    def rows(step: int) -> np.ndarray:
        return np.random.default_rng([seed, 7, step]).choice(
            source.num_prompts, rl.prompts_per_step, replace=False)

    def reward_fn(step: int, rollouts: np.ndarray, completions: np.ndarray) -> np.ndarray:
        return source.rewards(rows(step)[rollouts // rl.group_size], completions)

    return RolloutBatcher(rl, lambda s: source.prompts(rows(s)), reward_fn, seed=seed,
                          prompt_mask_fn=lambda s: source.prompt_mask(rows(s)))
