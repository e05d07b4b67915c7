"""The compiled sampler: an outer ``lax.scan`` over blocks, an inner ``lax.scan`` over steps.

Every decoding strategy is the same loop with swappable pieces, all fixed by a static ``Plan``:
how a block's logits are obtained (full forward, or a block KV cache), how tokens are proposed
(LLaDA's Gumbel-max on raw logits, or Dream's tempered and filtered softmax), which confidence
ranks the positions (the remasking rule), and how many positions are committed per step (a
precomputed count, a confidence threshold, or Dream's ``origin`` coin flips).

Randomness: row ``b`` draws from ``fold_in(key, b)`` and step ``t`` from ``fold_in(row_key, t)``,
with noise shaped by the block only, so a row's output does not depend on what else is in the
batch or how far it is left-padded.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.data.batching import left_pad
from dllm_jax.errors import ConfigError
from dllm_jax.sampling.presets import IMHConfig, Plan

NEG_INF = -jnp.inf


class Trajectory(NamedTuple):
    """What happened during sampling (G generated positions, T total steps).

    Attributes:
      step_map: int32 ``[B, G]``, the 0-based global step at which each position was committed.
      confidence: f32 ``[B, G]``, the model's (untempered) probability of the committed token
        at the step it was committed.
      entropy: f32 ``[B, T]``, ``H_t``: mean entropy of the model's distribution over the
        positions still masked in the current block before step ``t`` commits.
      margin: f32 ``[B, T]``, ``CM_t``: mean top-1 minus top-2 probability over the same set.
      roec: f32 ``[B, T]``, ``|H_t - H_{t-1}|`` (0 at the first step).
      num_committed: int32 ``[B, T]``.
      attn_s: f32 ``[B, G]`` AGDO's ``S_i`` at commit time (only with ``record_attention``).
      acceptance: f32 ``[B, num_blocks]`` IMH acceptance rate per block (IMH only).
    """

    step_map: jax.Array
    confidence: jax.Array
    entropy: jax.Array
    margin: jax.Array
    roec: jax.Array
    num_committed: jax.Array
    attn_s: jax.Array | None = None
    acceptance: jax.Array | None = None


class GenerateOutput(NamedTuple):
    """``sequences`` int32 ``[B, P + G]`` (prompt as given, then the completion, with tokens
    after the first EOS replaced by padding) and the optional ``trajectory``."""

    sequences: jax.Array
    trajectory: Trajectory | None = None


def as_key(key: Any) -> jax.Array:
    """Accepts an int seed or a PRNG key."""
    if isinstance(key, (int, np.integer)):
        return jax.random.PRNGKey(int(key))
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
             key: Any, record: bool = False, record_attention: bool = False) -> GenerateOutput:
    """Samples completions with one compiled program per (shape, config).

    Args:
      model: a :class:`dllm_jax.model.transformer.Transformer`.
      prompt_ids: ``[B, P]`` ids (left-padded, with ``attention_mask``) or a list of token
        lists of different lengths (left-padded here).
      attention_mask: ``[B, P]`` 1 for real prompt tokens.
      config: ``LLaDAConfig``, ``DreamConfig`` or ``IMHConfig``.
      key: PRNG key or int seed.
      record: also return the :class:`Trajectory`.
      record_attention: also record AGDO's ``S_i`` at commit (needs ``cache='none'``).

    Returns:
      :class:`GenerateOutput`.
    """
    cfg = model.config
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
    ids, mask = as_batch(prompt_ids, attention_mask, pad)
    if isinstance(config, IMHConfig):
        from dllm_jax.sampling.imh import generate_imh

        return generate_imh(model, ids, mask, config=config, key=as_key(key), record=record)
    plan = config.plan(cfg, ids.shape[1])
    if record_attention and plan.cache != "none":
        raise ConfigError("record_attention needs cache='none'")
    graphdef, state = nnx.split(model)
    seqs, traj = _sample(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), as_key(key),
                         plan=plan, record=record, record_attention=record_attention)
    return GenerateOutput(seqs, traj if record else None)


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("plan", "record", "record_attention"))
def _sample(graphdef, state, prompt_BP, pmask_BP, key, *, plan: Plan, record: bool,
            record_attention: bool):
    model = nnx.merge(graphdef, state)
    return run_plan(model, prompt_BP, pmask_BP, key, plan, record=record,
                    record_attention=record_attention)


def _filter_top_p(z_NV: jax.Array, top_p: float) -> jax.Array:
    """Dream's ``top_p_logits``: drop the tail whose cumulative probability exceeds ``top_p``
    (the first token is always kept); dropped logits become the dtype's minimum."""
    order = jnp.argsort(-z_NV, axis=-1)
    sorted_z = jnp.take_along_axis(z_NV, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_z, axis=-1), axis=-1)
    drop_sorted = cum > top_p
    drop_sorted = jnp.concatenate([jnp.zeros_like(drop_sorted[..., :1]), drop_sorted[..., :-1]],
                                  axis=-1)
    drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), axis=-1)
    return jnp.where(drop, jnp.finfo(z_NV.dtype).min, z_NV)


def _filter_top_k(z_NV: jax.Array, top_k: int) -> jax.Array:
    k = min(top_k, z_NV.shape[-1])
    kth = jax.lax.top_k(z_NV, k)[0][..., -1:]
    return jnp.where(z_NV < kth, jnp.finfo(z_NV.dtype).min, z_NV)


def _filter(z, plan: Plan):
    if plan.top_p is not None and plan.top_p < 1:
        z = _filter_top_p(z, plan.top_p)
    if plan.top_k is not None:
        z = _filter_top_k(z, plan.top_k)
    return z


def _margin(p_NV):
    top2 = jax.lax.top_k(p_NV, 2)[0]
    return top2[..., 0] - top2[..., 1]


def _neg_entropy(p_NV):
    return jnp.sum(p_NV * jnp.log(p_NV + 1e-10), axis=-1)


def _take(p_NV, idx_N):
    return jnp.take_along_axis(p_NV, idx_N[..., None], axis=-1)[..., 0]


def propose(logits_BNV: jax.Array, tok_keys: jax.Array, pos_keys: jax.Array, plan: Plan,
            s_BN: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Samples a token at every block position and scores each position.

    Returns:
      ``x0_BN`` proposed tokens (never MASK), ``conf_BN`` the rule's confidence, and ``p_BNV``
      the model's untempered distribution (for recording).
    """
    logits = logits_BNV.astype(jnp.float32)
    b, n, v = logits.shape
    if plan.logits_eos_inf and plan.eos_id >= 0:
        logits = logits.at[..., plan.eos_id].set(NEG_INF)
    not_mask = jnp.arange(v) != plan.mask_id
    p = jax.nn.softmax(logits, axis=-1)
    gumbel = lambda: jax.vmap(lambda k: jax.random.gumbel(k, (n, v), jnp.float32))(tok_keys)
    if plan.token_mode == "llada":
        z = _filter(logits, plan)
        scores = z + plan.temperature * gumbel() if plan.temperature > 0 else z
        x0 = jnp.argmax(jnp.where(not_mask, scores, NEG_INF), axis=-1)
        probs = p
    else:  # dream: logits / T, top-p, top-k, softmax, categorical (Gumbel-max) or argmax
        z = logits / plan.temperature if plan.temperature > 0 else logits
        z = _filter(z, plan)
        probs = jax.nn.softmax(z, axis=-1)
        scores = z + gumbel() if plan.temperature > 0 else probs
        x0 = jnp.argmax(jnp.where(not_mask, scores, NEG_INF), axis=-1)
    rule = plan.rule
    if rule in ("low_confidence", "maskgit_plus"):
        conf = _take(probs, x0)
    elif rule in ("random", "origin"):
        conf = jax.vmap(lambda k: jax.random.uniform(k, (n,)))(pos_keys)
    elif rule == "tpp":
        conf = jnp.max(jnp.where(not_mask, probs, 0.0), axis=-1)
    elif rule == "topk_margin":
        conf = _margin(probs)
    elif rule == "entropy":
        conf = _neg_entropy(probs)
    elif rule == "max_s":
        conf = s_BN.astype(jnp.float32)
    else:
        raise ConfigError(f"unknown rule {rule!r}")
    if plan.confidence_eos_eot_inf:
        special = (x0 == plan.eos_id) | (x0 == plan.eot_id)
        conf = jnp.where(special, NEG_INF, conf)
    return x0.astype(jnp.int32), conf, p


def select(conf_BN: jax.Array, cand_BN: jax.Array, count: jax.Array, pos_keys: jax.Array,
           plan: Plan, last: jax.Array, transfer_prob: jax.Array) -> jax.Array:
    """Which candidate positions commit this step (bool ``[B, N]``)."""
    b, n = conf_BN.shape
    if plan.rule == "origin":
        u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 2), (n,)))(pos_keys)
        return cand_BN & ((u < transfer_prob) | last)
    score = jnp.where(cand_BN, conf_BN, NEG_INF)
    if plan.alg_temp > 0:  # sampling without replacement from softmax(conf / alg_temp)
        g = jax.vmap(lambda k: jax.random.gumbel(jax.random.fold_in(k, 3), (n,)))(pos_keys)
        score = jnp.where(cand_BN, score / plan.alg_temp + g, NEG_INF)
    if plan.threshold is not None:
        best = jax.nn.one_hot(jnp.argmax(score, axis=-1), n, dtype=jnp.bool_)
        sel = cand_BN & ((conf_BN >= plan.threshold) | best)
        return jnp.where(last, cand_BN, sel)
    order = jnp.argsort(-score, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1)
    return cand_BN & (rank < count)


def step_stats(p_BNV: jax.Array, cand_BN: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean entropy and mean top-1/top-2 margin over the candidate positions."""
    ent = -jnp.sum(jnp.where(p_BNV > 0, p_BNV * jnp.log(jnp.where(p_BNV > 0, p_BNV, 1.0)), 0.0),
                   axis=-1)
    marg = _margin(p_BNV)
    w = cand_BN.astype(jnp.float32)
    denom = jnp.maximum(w.sum(-1), 1.0)
    return (ent * w).sum(-1) / denom, (marg * w).sum(-1) / denom


def row_step_keys(row_keys: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    k = jax.vmap(lambda rk: jax.random.fold_in(rk, t))(row_keys)
    return (jax.vmap(lambda kk: jax.random.fold_in(kk, 0))(k),
            jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(k))


def run_plan(model, prompt_BP: jax.Array, pmask_BP: jax.Array, key: jax.Array, plan: Plan, *,
             record: bool = False, record_attention: bool = False,
             row_ids: jax.Array | None = None) -> tuple[jax.Array, Trajectory]:
    """The sampler body (call inside ``jit``): returns ``sequences [B, P+G]`` and the record."""
    b, p_len = prompt_BP.shape
    g, n, nb, spb = plan.gen_length, plan.block_length, plan.num_blocks, plan.steps_per_block
    extra = (g - n) if plan.cache == "prefix" else 0  # room for the prefix cache's fixed window
    length = p_len + g + extra
    x = jnp.concatenate([prompt_BP.astype(jnp.int32), jnp.full((b, g), plan.mask_id, jnp.int32),
                         jnp.full((b, extra), plan.pad_id, jnp.int32)], axis=1)
    amask = jnp.concatenate([pmask_BP.astype(jnp.bool_), jnp.ones((b, g), jnp.bool_),
                             jnp.zeros((b, extra), jnp.bool_)], axis=1)
    if row_ids is None:
        row_ids = jnp.arange(b)
    row_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(row_ids)
    pos = jnp.arange(length)
    use_cfg = plan.cfg_scale > 0
    need_s = plan.rule == "max_s" or record_attention
    counts = jnp.asarray(plan.counts if plan.counts is not None else np.zeros((nb, spb)),
                         jnp.int32)
    tprobs = jnp.asarray(plan.transfer_probs if plan.transfer_probs is not None
                         else np.zeros(spb), jnp.float32)

    def batch2(x):
        if not use_cfg:
            return x, amask
        un = jnp.where(pos[None] < p_len, plan.mask_id, x)
        return jnp.concatenate([x, un]), jnp.concatenate([amask, amask])

    def guide(logits):
        logits = logits.astype(jnp.float32)
        if not use_cfg:
            return logits
        cond, un = logits[:b], logits[b:]
        return un + (plan.cfg_scale + 1.0) * (cond - un)

    def full_logits(x, start):
        x2, m2 = batch2(x)
        win = (start, n)
        if need_s:
            keys = (x2 != plan.mask_id) & m2
            logits, aux = model.with_attention(x2, m2, keys_BL=keys, window=win)
            s = jax.lax.dynamic_slice_in_dim(aux["S"][:b], start, n, axis=1)
            return guide(logits), s
        return guide(model(x2, m2, window=win)), None

    win_len = g if plan.cache == "prefix" else n

    def prefill(x, start):
        x2, m2 = batch2(x)
        logits, cache = model.prefill(x2, m2, window=(start, n))
        return guide(logits), cache

    def cached_logits(x, cache, start):
        x2, m2 = batch2(x)
        return guide(model.decode_block(x2, m2, cache, start, win_len, plan.cache)[:, :n])

    def commit(state, logits, s_bn, start, t, count, last, tprob):
        x, smap, crec, srec = state
        xb = jax.lax.dynamic_slice_in_dim(x, start, n, axis=1)
        cand = xb == plan.mask_id
        tok_keys, pos_keys = row_step_keys(row_keys, t)
        x0, conf, p = propose(logits, tok_keys, pos_keys, plan, s_bn)
        sel = select(conf, cand, count, pos_keys, plan, last, tprob)
        x = jax.lax.dynamic_update_slice_in_dim(x, jnp.where(sel, x0, xb), start, axis=1)
        ys = {"n": sel.sum(-1).astype(jnp.int32)}
        if record:
            off = start - p_len
            upd = lambda rec, val: jax.lax.dynamic_update_slice_in_dim(
                rec, jnp.where(sel, val, jax.lax.dynamic_slice_in_dim(rec, off, n, axis=1)),
                off, axis=1)
            smap = upd(smap, jnp.broadcast_to(t, sel.shape).astype(jnp.int32))
            crec = upd(crec, _take(p, x0))
            if record_attention:
                srec = upd(srec, s_bn.astype(jnp.float32))
            ys["H"], ys["CM"] = step_stats(p, cand)
        return (x, smap, crec, srec), ys

    def skip_ys():
        ys = {"n": jnp.zeros((b,), jnp.int32)}
        if record:
            ys["H"] = ys["CM"] = jnp.zeros((b,), jnp.float32)
        return ys

    def guarded(fn, state, start):
        """Runs ``fn`` unless the block has no masked position left (threshold decoding)."""
        if plan.counts is not None and plan.threshold is None and plan.rule != "origin":
            return fn(state)
        xb = jax.lax.dynamic_slice_in_dim(state[0], start, n, axis=1)
        return jax.lax.cond(jnp.any(xb == plan.mask_id), fn, lambda st: (st, skip_ys()), state)

    def block(state, blk):
        start = p_len + blk * n

        def full_step(st, j):
            def run(st):
                logits, s_bn = full_logits(st[0], start)
                return commit(st, logits, s_bn, start, blk * spb + j, counts[blk, j],
                              j == spb - 1, tprobs[j])
            return guarded(run, st, start)

        if plan.cache == "none":
            return jax.lax.scan(full_step, state, jnp.arange(spb))
        logits0, cache = prefill(state[0], start)
        state, ys0 = commit(state, logits0, None, start, blk * spb, counts[blk, 0],
                            spb == 1, tprobs[0])

        def cached_step(st, j):
            def run(st):
                logits = cached_logits(st[0], cache, start)
                return commit(st, logits, None, start, blk * spb + j, counts[blk, j],
                              j == spb - 1, tprobs[j])
            return guarded(run, st, start)

        state, ys = jax.lax.scan(cached_step, state, jnp.arange(1, spb))
        return state, jax.tree.map(lambda a, r: jnp.concatenate([a[None], r]), ys0, ys)

    init = (x, jnp.full((b, g), -1, jnp.int32), jnp.zeros((b, g), jnp.float32),
            jnp.zeros((b, g), jnp.float32))
    (x, smap, crec, srec), ys = jax.lax.scan(block, init, jnp.arange(nb))
    ys = jax.tree.map(lambda a: a.reshape(nb * spb, b).T, ys)
    seqs = strip_after_eos(x[:, :p_len + g], p_len, plan.eos_id, plan.pad_id)
    if not record:
        return seqs, None
    h = ys["H"]
    roec = jnp.concatenate([jnp.zeros((b, 1)), jnp.abs(h[:, 1:] - h[:, :-1])], axis=1)
    traj = Trajectory(step_map=smap, confidence=crec, entropy=h, margin=ys["CM"], roec=roec,
                      num_committed=ys["n"], attn_s=srec if record_attention else None)
    return seqs, traj


def strip_after_eos(seqs_BL: jax.Array, p_len: int, eos_id: int, pad_id: int) -> jax.Array:
    """Generated tokens after the first EOS become padding (the EOS itself is kept)."""
    if eos_id < 0:
        return seqs_BL
    gen = seqs_BL[:, p_len:]
    is_eos = (gen == eos_id).astype(jnp.int32)
    after = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
    return seqs_BL.at[:, p_len:].set(jnp.where(after, pad_id, gen))
