"""The compiled sampler: an outer ``lax.scan`` over blocks, an inner ``lax.scan`` over steps.

Every decoding strategy is the same loop over the strategy objects a ``Plan`` holds (see
docs/sampling.md, "Structure"): ``run_plan`` builds the canvas, then for each block the plan's
logits source (``sources.py``) drives the block's steps, and each step proposes tokens,
scores positions and commits some (``plan.py``: ``propose``, ``select``) and records what
happened (``record.py``). Nothing in the loop looks at a preset's knobs. ``generate`` dispatches
IMH presets to ``imh.py``.

Randomness: row ``b`` draws from ``fold_in(key, b)`` and step ``t`` from ``fold_in(row_key, t)``,
with noise shaped by the block only, so a row's output does not depend on what else is in the
batch or how far it is left-padded. With one key per row, row ``b`` draws from
``fold_in(key_b, 0)``: exactly what it would draw alone with ``key_b``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from dllm_jax.data.batching import left_pad
from dllm_jax.errors import ConfigError
from dllm_jax.model import sharding as shd
from dllm_jax.sampling.budget import check_request
from dllm_jax.sampling.imh import generate_imh
from dllm_jax.sampling.plan import Plan, is_per_row, propose, row_keys_of, row_step_keys, select
from dllm_jax.sampling.presets import IMHConfig
from dllm_jax.sampling.record import CommitRecord, GenerateOutput, Recorder, StepRecord, Trajectory
from dllm_jax.sampling.sources import ClassifierFreeGuidance, LogitsFn, ModelLogits


def as_key(key: Any, rows: int | None = None) -> jax.Array:
    """An int seed or a PRNG key for the batch; or one per row: a list of seeds/keys, a 1-D
    array of signed integer seeds, or raw keys ``[B, 2]`` (returned as raw keys ``[B, 2]``)."""
    if isinstance(key, (int, np.integer)):
        return jax.random.PRNGKey(int(key))
    if (isinstance(key, (np.ndarray, jax.Array)) and key.ndim == 1
            and jnp.issubdtype(key.dtype, jnp.signedinteger)):
        key = [int(k) for k in np.asarray(key)]  # seeds (a raw key is uint32)
    if isinstance(key, (list, tuple)):
        if not key:
            raise ValueError("key: an empty list of per-row keys")
        key = jnp.stack([as_key(k) for k in key])
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1:
        key = jax.random.key_data(key)  # typed keys, one per row: as raw keys
    if is_per_row(key) and rows is not None and key.shape[0] != rows:
        raise ValueError(f"key: {key.shape[0]} per-row keys for {rows} prompt rows")
    return key


def as_batch(prompt_ids: Any, attention_mask: Any, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token lists (ragged allowed) or a ``[B, P]`` array -> left-padded ids and 0/1 mask."""
    if isinstance(prompt_ids, (list, tuple)) and prompt_ids and isinstance(
            prompt_ids[0], (list, tuple, np.ndarray)):
        if attention_mask is not None:
            raise ValueError("attention_mask is only accepted with a [B, P] prompt array")
        return left_pad([list(map(int, p)) for p in prompt_ids], pad_id, buckets=None)
    ids = np.asarray(prompt_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be [B, P] with P >= 1, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"prompt_ids must be integers, got {ids.dtype}")
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != prompt shape {ids.shape}")
    return ids.astype(np.int32), mask.astype(np.int32)


def generate(model: nnx.Module, prompt_ids: Any, attention_mask: Any = None, *, config: Any,
             key: Any, record: bool = False, record_attention: bool = False,
             mesh: Mesh | None = None, rules: shd.ShardingRules | None = None
             ) -> GenerateOutput:
    """Samples completions with one compiled program per (shape, config, mesh).

    Args:
      model: a :class:`dllm_jax.model.transformer.Transformer`.
      prompt_ids: ``[B, P]`` ids (left-padded, with ``attention_mask``) or a list of token
        lists of different lengths (left-padded here).
      attention_mask: ``[B, P]`` 1 for real prompt tokens.
      config: ``LLaDAConfig``, ``DreamConfig`` or ``IMHConfig``.
      key: PRNG key or int seed for the batch (row ``b`` draws from ``fold_in(key, b)``), or one
        per row (a list or integer array of seeds, a list of keys, raw keys ``[B, 2]``): row
        ``b`` then decodes exactly as ``generate`` of that row alone with its key.
      record: also return the :class:`Trajectory`.
      record_attention: also record AGDO's ``S_i`` at commit (needs ``cache='none'``).
      mesh: run sharded over this mesh (see docs/sampling.md, "Sharded sampling"); default:
        the mesh the model's parameters are sharded over, if any. Every process passes the
        whole batch and gets global arrays whose rows are split over the ``batch`` rule's axes.
      rules: the sharding rules of the parameters and activations (default ``ShardingRules()``).

    Returns:
      :class:`GenerateOutput`.
    """
    cfg = model.config
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
    ids, mask = as_batch(prompt_ids, attention_mask, pad)
    key = as_key(key, ids.shape[0])
    if isinstance(config, IMHConfig):
        check_request(cfg, ids.shape[0] * config.num_candidates, ids.shape[1],
                      config.gen_length, config.block_length)
    else:
        plan = config.plan(cfg, ids.shape[1])
        if record_attention and not plan.cache.keeps_attention:
            raise ConfigError("record_attention needs cache='none'")
        rows = ids.shape[0] * (2 if isinstance(plan.guidance, ClassifierFreeGuidance) else 1)
        check_request(cfg, rows, ids.shape[1], plan.gen_length, plan.block_length,
                      cache=not plan.cache.keeps_attention, extra=plan.cache.extra_slots)
    graphdef, state = nnx.split(model)
    mesh = shd.mesh_of(state) if mesh is None else mesh
    if mesh is None:
        rules = None
        ids_BP, mask_BP = jnp.asarray(ids), jnp.asarray(mask)
    else:
        rules = rules or shd.ShardingRules()
        state = shd.place_state(state, mesh, rules)
        ids_BP, mask_BP = (shd.put_rows(pad_rows(x, shd.batch_divisor(mesh, rules)), mesh, rules)
                           for x in (ids, mask))
        if is_per_row(key):
            key = shd.put_rows(pad_rows(np.asarray(key), shd.batch_divisor(mesh, rules)), mesh,
                               rules)
    if isinstance(config, IMHConfig):
        out = generate_imh(nnx.merge(graphdef, state), ids_BP, mask_BP, config=config,
                           key=key, record=record, mesh=mesh, rules=rules)
    else:
        out = GenerateOutput(*_sample(graphdef, state, ids_BP, mask_BP, key, plan=plan,
                                      record=record, record_attention=record_attention,
                                      mesh=mesh, rules=rules))
    if ids_BP.shape[0] == ids.shape[0]:
        return out
    return _drop_padding(out, rows=ids.shape[0], mesh=mesh, rules=rules)


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    """``x`` with copies of its last row appended up to a multiple of ``multiple`` rows (rows
    are sampled independently, so the copies change nothing and are dropped after)."""
    extra = -x.shape[0] % multiple
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x


@functools.partial(jax.jit, static_argnames=("rows", "mesh", "rules"))
def _drop_padding(out: GenerateOutput, *, rows: int, mesh: Mesh,
                  rules: shd.ShardingRules) -> GenerateOutput:
    with shd.use_mesh(mesh, rules):
        return shd.constrain_rows(jax.tree.map(lambda x: x[:rows], out))


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("plan", "record", "record_attention", "mesh", "rules"))
def _sample(graphdef: nnx.GraphDef, state: nnx.State, prompt_BP: jax.Array, pmask_BP: jax.Array,
            key: jax.Array, *, plan: Plan, record: bool, record_attention: bool,
            mesh: Mesh | None = None, rules: shd.ShardingRules | None = None
            ) -> tuple[jax.Array, Trajectory | None]:
    model = nnx.merge(graphdef, state)
    with shd.use_mesh(mesh, rules):
        return shd.constrain_rows(run_plan(model, prompt_BP, pmask_BP, key, plan, record=record,
                                           record_attention=record_attention))


class Carry(NamedTuple):
    """The loop state: the canvas ``[B, L]`` and the per-position record."""

    canvas_BL: jax.Array
    commits: CommitRecord


@dataclasses.dataclass(frozen=True, eq=False)
class Block:
    """The steps of one block, inside the compiled function (``sources.BlockSteps``): the
    plan's logits source drives them, ``commit`` for a step whose logits it already has and
    ``step`` otherwise.

    Attributes:
      plan: the static plan.
      row_keys: per-row PRNG keys ``[B]``.
      counts: int32 ``[num_blocks, steps_per_block]`` scheduled commit counts (zeros when the
        transfer rule decides at run time).
      transfer_probs: f32 ``[steps_per_block]`` ``origin``'s commit probabilities (else zeros).
      recorder: what to record.
      index: the block index (traced).
      start: the block's first canvas slot (traced).
      prompt_length: ``P``.
    """

    plan: Plan
    row_keys: jax.Array
    counts: jax.Array
    transfer_probs: jax.Array
    recorder: Recorder
    index: jax.Array
    start: jax.Array
    prompt_length: int

    @property
    def num_steps(self) -> int:
        return self.plan.steps_per_block

    def _tokens(self, canvas_BL: jax.Array) -> jax.Array:
        """The block's slice of the canvas ``[B, N]``."""
        return jax.lax.dynamic_slice_in_dim(canvas_BL, self.start, self.plan.block_length, axis=1)

    def commit(self, carry: Carry, j: jax.Array | int, logits_BNV: jax.Array,
               s_BN: jax.Array | None) -> tuple[Carry, StepRecord]:
        """Step ``j`` of the block: propose, select, write the canvas and the record."""
        plan = self.plan
        xb = self._tokens(carry.canvas_BL)
        cand = xb == plan.mask_id
        t = self.index * plan.steps_per_block + j
        tok_keys, pos_keys = row_step_keys(self.row_keys, t)
        x0, conf, p = propose(logits_BNV, tok_keys, pos_keys, plan, s_BN)
        sel = select(conf, cand, self.counts[self.index, j], pos_keys, plan,
                     j == plan.steps_per_block - 1, self.transfer_probs[j])
        canvas = jax.lax.dynamic_update_slice_in_dim(carry.canvas_BL, jnp.where(sel, x0, xb),
                                                     self.start, axis=1)
        canvas = shd.constrain(canvas, ("batch", "length"))
        commits = self.recorder.commit(carry.commits, sel, self.start - self.prompt_length, t,
                                       p, x0, s_BN)
        return Carry(canvas, commits), self.recorder.step(sel, p, cand)

    def step(self, carry: Carry, j: jax.Array, logits_fn: LogitsFn) -> tuple[Carry, StepRecord]:
        """Step ``j`` with logits from ``logits_fn(canvas)``; skipped when the transfer rule
        can complete a block early and it has."""
        def run(c: Carry) -> tuple[Carry, StepRecord]:
            return self.commit(c, j, *logits_fn(c.canvas_BL))

        if not self.plan.transfer.may_finish_block_early:
            return run(carry)
        has_masked = jnp.any(self._tokens(carry.canvas_BL) == self.plan.mask_id)
        b = carry.canvas_BL.shape[0]
        return jax.lax.cond(has_masked, run, lambda c: (c, self.recorder.skipped(b)), carry)


def initial_canvas(prompt_BP: jax.Array, pmask_BP: jax.Array, plan: Plan
                   ) -> tuple[jax.Array, jax.Array]:
    """The prompt, ``G`` MASKs and the cache's padding slots; and which slots exist."""
    b = prompt_BP.shape[0]
    g, extra = plan.gen_length, plan.cache.extra_slots
    canvas = jnp.concatenate([prompt_BP.astype(jnp.int32),
                              jnp.full((b, g), plan.mask_id, jnp.int32),
                              jnp.full((b, extra), plan.pad_id, jnp.int32)], axis=1)
    amask = jnp.concatenate([pmask_BP.astype(jnp.bool_), jnp.ones((b, g), jnp.bool_),
                             jnp.zeros((b, extra), jnp.bool_)], axis=1)
    return canvas, amask


def schedule_arrays(plan: Plan) -> tuple[jax.Array, jax.Array]:
    """The plan's counts ``[blocks, steps]`` and transfer probabilities ``[steps]`` as arrays."""
    nb, spb = plan.num_blocks, plan.steps_per_block
    counts = plan.counts if plan.counts is not None else np.zeros((nb, spb))
    probs = plan.transfer_probs if plan.transfer_probs is not None else np.zeros(spb)
    return jnp.asarray(counts, jnp.int32), jnp.asarray(probs, jnp.float32)


def run_plan(model: nnx.Module, prompt_BP: jax.Array, pmask_BP: jax.Array, key: jax.Array,
             plan: Plan, *, record: bool = False, record_attention: bool = False
             ) -> tuple[jax.Array, Trajectory | None]:
    """The sampler body (call inside ``jit``): returns ``sequences [B, P+G]`` exactly as
    committed (tokens after an EOS included, as the references return them) and the record."""
    b, p_len = prompt_BP.shape
    canvas_BL, amask_BL = shd.constrain_rows(initial_canvas(prompt_BP, pmask_BP, plan))
    recorder = Recorder(record, record_attention)
    fwd = ModelLogits(model, amask_BL, plan.guidance, p_len, plan.block_length, plan.mask_id,
                      with_attention=plan.scorer.needs_attention or record_attention)
    counts, probs = schedule_arrays(plan)
    row_keys = shd.constrain_rows(row_keys_of(key, b))

    def run_block(carry: Carry, index: jax.Array) -> tuple[Carry, StepRecord]:
        block = Block(plan, row_keys, counts, probs, recorder, index,
                      p_len + index * plan.block_length, p_len)
        return plan.cache.run_block(fwd, block, carry)

    init = Carry(canvas_BL, recorder.empty(b, plan.gen_length))
    final, steps = jax.lax.scan(run_block, init, jnp.arange(plan.num_blocks))
    return final.canvas_BL[:, :p_len + plan.gen_length], recorder.trajectory(final.commits, steps)
