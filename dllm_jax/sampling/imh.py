"""Global tempering: an Independent Metropolis-Hastings chain over block candidates.

Per block, K candidate completions are drawn as one batch (``B * K`` rows) by a high-entropy
proposal (random-order or top-probability-position decoding at ``proposal_temperature``).
Each candidate carries ``log p_hat`` (the model's log-probability of its committed tokens along
its own path) and ``log q`` (the proposal's log-probability of the same choices). An
independent MH chain over the candidates targets ``p^alpha``: from the current state ``x`` it
accepts ``x'`` with probability ``min(1, exp(alpha (lp' - lp) - (lq' - lq)))``, which is
``exp((alpha - 1)(lp' - lp))`` at proposal temperature 1. The chain's final state is committed
for every copy and decoding moves to the next block. Blocks are one ``lax.scan``; candidates
are a batch dimension; the chain is a ``lax.scan`` over K. Each proposal step is the shared
``propose`` / ``select`` over the proposal's LLaDA plan. See docs/sampling.md, "IMH".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.sampling.plan import Plan, propose, row_step_keys, select
from dllm_jax.sampling.presets import IMHConfig
from dllm_jax.sampling.record import GenerateOutput, IMHRecord, strip_after_eos


def generate_imh(model, prompt_BP: np.ndarray, pmask_BP: np.ndarray, *, config: IMHConfig,
                 key: jax.Array, record: bool = False) -> GenerateOutput:
    plan = config.plan(model.config, prompt_BP.shape[1])
    graphdef, state = nnx.split(model)
    seqs, acc, lp = _imh(graphdef, state, jnp.asarray(prompt_BP), jnp.asarray(pmask_BP), key,
                         plan=plan, alpha=float(config.alpha), k=int(config.num_candidates))
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


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("plan", "alpha", "k"))
def _imh(graphdef, state, prompt_BP, pmask_BP, key, *, plan: Plan, alpha: float, k: int):
    model = nnx.merge(graphdef, state)
    b, p_len = prompt_BP.shape
    g, n, nb, spb = plan.gen_length, plan.block_length, plan.num_blocks, plan.steps_per_block
    rows = b * k
    x = jnp.concatenate([jnp.repeat(prompt_BP.astype(jnp.int32), k, 0),
                         jnp.full((rows, g), plan.mask_id, jnp.int32)], 1)
    amask = jnp.concatenate([jnp.repeat(pmask_BP.astype(jnp.bool_), k, 0),
                             jnp.ones((rows, g), jnp.bool_)], 1)
    row_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
    cand_keys = jax.vmap(lambda rk: jax.vmap(lambda j: jax.random.fold_in(rk, j))(
        jnp.arange(k)))(row_keys).reshape((rows,) + row_keys.shape[1:])
    counts = jnp.asarray(plan.counts, jnp.int32)
    t_prop = plan.tokens.temperature
    not_mask = jnp.arange(model.config.vocab_size) != plan.mask_id

    def block(carry, blk):
        x, lp_total = carry
        start = p_len + blk * n

        def step(c, j):
            x, lp, lq = c
            logits = model(x, amask, window=(start, n)).astype(jnp.float32)
            xb = jax.lax.dynamic_slice_in_dim(x, start, n, axis=1)
            cand = xb == plan.mask_id
            tok_keys, pos_keys = row_step_keys(cand_keys, blk * spb + j)
            x0, conf, _ = propose(logits, tok_keys, pos_keys, plan)
            sel = select(conf, cand, counts[blk, j], pos_keys, plan, j == spb - 1,
                         jnp.float32(0.0))
            masked_logits = jnp.where(not_mask, logits, -jnp.inf)
            lp_tok = jnp.take_along_axis(jax.nn.log_softmax(masked_logits, -1), x0[..., None],
                                         -1)[..., 0]
            lq_tok = jnp.take_along_axis(jax.nn.log_softmax(masked_logits / t_prop, -1),
                                         x0[..., None], -1)[..., 0]
            lp = lp + jnp.sum(jnp.where(sel, lp_tok, 0.0), -1)
            lq = lq + jnp.sum(jnp.where(sel, lq_tok, 0.0), -1)
            x = jax.lax.dynamic_update_slice_in_dim(x, jnp.where(sel, x0, xb), start, axis=1)
            return (x, lp, lq), None

        zeros = jnp.zeros((rows,), jnp.float32)
        (x, lp, lq), _ = jax.lax.scan(step, (x, zeros, zeros), jnp.arange(spb))
        u = jax.vmap(lambda rk: jax.random.uniform(jax.random.fold_in(rk, 1_000_003 + blk),
                                                   (k,)))(row_keys)
        choice, acc = chain(lp.reshape(b, k), lq.reshape(b, k), u, alpha)
        flat = jnp.arange(b) * k + choice
        chosen = jax.lax.dynamic_slice_in_dim(x[flat], start, n, axis=1)  # [B, N]
        x = jax.lax.dynamic_update_slice_in_dim(x, jnp.repeat(chosen, k, 0), start, axis=1)
        lp_total = lp_total + lp.reshape(b, k)[jnp.arange(b), choice]
        return (x, lp_total), acc

    (x, lp_total), acc_NB = jax.lax.scan(block, (x, jnp.zeros((b,), jnp.float32)),
                                         jnp.arange(nb))
    seqs = strip_after_eos(x[::k], p_len, plan.eos_id, plan.pad_id)
    return seqs, acc_NB.T, lp_total
