"""Global tempering: an Independent Metropolis-Hastings chain over block candidates.

Per block, K candidate completions are drawn as one batch (``B * K`` rows) by a high-entropy
proposal (random-order or top-probability-position decoding at ``proposal_temperature``).
Each candidate carries ``lq``, the proposal's log-probability of its token choices along its
order, and ``lp``: the model's log-probability of its tokens along that same order
(``target='path'``) or left to right (``target='canonical'``). An independent MH chain over
the candidates, starting at candidate 0, accepts ``x'`` from ``x`` with probability
``min(1, exp(alpha (lp' - lp) - (lq' - lq)))``. The chain's final state is committed for every
copy and decoding moves to the next block.

What that samples (docs/sampling.md, "IMH"): the proposal's order rule picks positions from
the canvas without looking at the token it then samples, so the chain is exact on (sequence,
order) pairs and, per block given the blocks before, targets
``sum_order rho(order | x) p(x | order)^alpha`` (``path``; ``rho`` is the order rule's law,
uniform for ``random``) or ``p_LR(x)^alpha`` (``canonical``), up to the bias of a K-step chain.

Blocks are one ``lax.scan``; candidates are a batch dimension; the chain is a ``lax.scan``
over K. Each proposal step is the shared ``propose`` / ``select`` over the proposal's LLaDA
plan. The returned sequences are the committed canvas as it is (no rewriting after EOS).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from dllm_jax.model import sharding as shd
from dllm_jax.sampling.plan import Plan, propose, row_keys_of, row_step_keys, select
from dllm_jax.sampling.presets import IMHConfig
from dllm_jax.sampling.record import GenerateOutput, IMHRecord


def generate_imh(model, prompt_BP: jax.Array, pmask_BP: jax.Array, *, config: IMHConfig,
                 key: jax.Array, record: bool = False, mesh: Mesh | None = None,
                 rules: shd.ShardingRules | None = None) -> GenerateOutput:
    """IMH sampling; with ``mesh`` the candidates' rows and the activations are sharded like
    the training batch (``generate`` places the prompts and the parameters)."""
    plan = config.plan(model.config, prompt_BP.shape[1])
    graphdef, state = nnx.split(model)
    seqs, acc, lp = _imh(graphdef, state, jnp.asarray(prompt_BP), jnp.asarray(pmask_BP), key,
                         plan=plan, alpha=float(config.alpha), k=int(config.num_candidates),
                         canonical=config.target == "canonical", mesh=mesh, rules=rules)
    return GenerateOutput(seqs, IMHRecord(acc, lp) if record else None)


def chain(lp_BK: jax.Array, lq_BK: jax.Array, u_BK: jax.Array, alpha: float
          ) -> tuple[jax.Array, jax.Array]:
    """Independent MH over K candidates starting at candidate 0.

    Returns:
      the index of the final state ``[B]`` and the acceptance rate ``[B]`` over the K - 1 moves.
    """
    b, k = lp_BK.shape
    log_w = alpha * lp_BK - lq_BK  # importance weight of each candidate, log space

    def move(carry, j):
        cur, acc = carry
        log_ratio = log_w[:, j] - jnp.take_along_axis(log_w, cur[:, None], 1)[:, 0]
        accept = jnp.log(u_BK[:, j]) < jnp.minimum(log_ratio, 0.0)
        return (jnp.where(accept, j, cur), acc + accept), None

    (cur, acc), _ = jax.lax.scan(move, (jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.int32)),
                                 jnp.arange(1, k))
    return cur, acc / max(k - 1, 1)


def sampling_log_probs(logits_RNV: jax.Array, tokens_RN: jax.Array, mask_id: int,
                    temperature: float = 1.0) -> jax.Array:
    """``log softmax(logits / temperature)`` of ``tokens_RN`` with MASK excluded (it is never
    sampled), ``[R, N]``."""
    not_mask = jnp.arange(logits_RNV.shape[-1]) != mask_id
    logp = jax.nn.log_softmax(jnp.where(not_mask, logits_RNV / temperature, -jnp.inf), -1)
    return jnp.take_along_axis(logp, tokens_RN[..., None], -1)[..., 0]


def propose_block(model, x_RL: jax.Array, amask_RL: jax.Array, start: jax.Array,
                  blk: jax.Array, cand_keys: jax.Array, plan: Plan
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Decodes block ``blk`` of every candidate row with the proposal's plan.

    Returns:
      the canvas ``[R, L]`` and, per row ``[R]``, ``lp`` (the model's log-probability of the
      committed tokens along the row's order) and ``lq`` (the proposal's).
    """
    n, spb = plan.block_length, plan.steps_per_block
    counts = jnp.asarray(plan.counts, jnp.int32)

    def step(c, j):
        x, lp, lq = c
        logits = model(x, amask_RL, window=(start, n)).astype(jnp.float32)
        xb = jax.lax.dynamic_slice_in_dim(x, start, n, axis=1)
        tok_keys, pos_keys = row_step_keys(cand_keys, blk * spb + j)
        x0, conf, _ = propose(logits, tok_keys, pos_keys, plan)
        sel = select(conf, xb == plan.mask_id, counts[blk, j], pos_keys, plan, j == spb - 1,
                     jnp.float32(0.0))
        lp_tok = sampling_log_probs(logits, x0, plan.mask_id)
        lq_tok = sampling_log_probs(logits, x0, plan.mask_id, plan.tokens.temperature)
        lp = lp + jnp.sum(jnp.where(sel, lp_tok, 0.0), -1)
        lq = lq + jnp.sum(jnp.where(sel, lq_tok, 0.0), -1)
        x = jax.lax.dynamic_update_slice_in_dim(x, jnp.where(sel, x0, xb), start, axis=1)
        return (x, lp, lq), None

    zeros = jnp.zeros((x_RL.shape[0],), jnp.float32)
    (x, lp, lq), _ = jax.lax.scan(step, (x_RL, zeros, zeros), jnp.arange(spb))
    return x, lp, lq


def left_to_right_log_prob(model, x_RL: jax.Array, amask_RL: jax.Array, start: jax.Array,
                           plan: Plan) -> jax.Array:
    """``log p_LR`` of each row's block ``[R]``: ``sum_i log p(x_i | the block's positions
    before i, the rest of the block masked)``, one forward pass per position."""
    n = plan.block_length
    xb = jax.lax.dynamic_slice_in_dim(x_RL, start, n, axis=1)

    def position(lp, i):
        hidden = jnp.where(jnp.arange(n) >= i, plan.mask_id, xb)
        x = jax.lax.dynamic_update_slice_in_dim(x_RL, hidden, start, axis=1)
        logits = model(x, amask_RL, window=(start, n)).astype(jnp.float32)
        return lp + sampling_log_probs(logits, xb, plan.mask_id)[:, i], None

    lp, _ = jax.lax.scan(position, jnp.zeros((x_RL.shape[0],), jnp.float32), jnp.arange(n))
    return lp


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("plan", "alpha", "k", "canonical", "mesh", "rules"))
def _imh(graphdef, state, prompt_BP, pmask_BP, key, *, plan: Plan, alpha: float, k: int,
         canonical: bool, mesh: Mesh | None = None, rules: shd.ShardingRules | None = None):
    with shd.use_mesh(mesh, rules):
        return shd.constrain_rows(_imh_body(nnx.merge(graphdef, state), prompt_BP, pmask_BP, key,
                                            plan, alpha, k, canonical))


def _imh_body(model, prompt_BP, pmask_BP, key, plan: Plan, alpha: float, k: int,
              canonical: bool):
    b, p_len = prompt_BP.shape
    n, rows = plan.block_length, b * k
    x = jnp.concatenate([jnp.repeat(prompt_BP.astype(jnp.int32), k, 0),
                         jnp.full((rows, plan.gen_length), plan.mask_id, jnp.int32)], 1)
    amask = jnp.concatenate([jnp.repeat(pmask_BP.astype(jnp.bool_), k, 0),
                             jnp.ones((rows, plan.gen_length), jnp.bool_)], 1)
    x, amask = shd.constrain_rows((x, amask))
    row_keys = row_keys_of(key, b)
    cand_keys = jax.vmap(lambda rk: jax.vmap(lambda j: jax.random.fold_in(rk, j))(
        jnp.arange(k)))(row_keys).reshape((rows,) + row_keys.shape[1:])

    def block(carry, blk):
        x, lp_total = carry
        start = p_len + blk * n
        x, lp, lq = propose_block(model, x, amask, start, blk, cand_keys, plan)
        if canonical:
            lp = left_to_right_log_prob(model, x, amask, start, plan)
        u = jax.vmap(lambda rk: jax.random.uniform(jax.random.fold_in(rk, 1_000_003 + blk),
                                                   (k,)))(row_keys)
        choice, acc = chain(lp.reshape(b, k), lq.reshape(b, k), u, alpha)
        flat = jnp.arange(b) * k + choice
        chosen = jax.lax.dynamic_slice_in_dim(x[flat], start, n, axis=1)  # [B, N]
        x = jax.lax.dynamic_update_slice_in_dim(x, jnp.repeat(chosen, k, 0), start, axis=1)
        lp_total = lp_total + lp.reshape(b, k)[jnp.arange(b), choice]
        return (x, lp_total), acc

    (x, lp_total), acc_NB = jax.lax.scan(block, (x, jnp.zeros((b,), jnp.float32)),
                                         jnp.arange(plan.num_blocks))
    return x[::k], acc_NB.T, lp_total
