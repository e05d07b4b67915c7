"""Scoring: run the model on constructed inputs and return per-token log-probs (SPEC 2, 6).

Dream's logit shift is applied here, once (``align_logits``), so every loss sees logits where
position i predicts token i. State builders are pure array functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_jax.model import align_logits
from dllm_jax.objectives.losses import token_logprobs


def aligned(model, tokens_BL: jax.Array, attention_mask_BL: jax.Array | None = None
            ) -> jax.Array:
    """Float32 logits, shifted for Dream-family models."""
    return align_logits(model.config, model(tokens_BL, attention_mask_BL)).astype(jnp.float32)


def score_masked(model, tokens_BL: jax.Array, masked_BL: jax.Array,
                 attention_mask_BL: jax.Array | None = None) -> jax.Array:
    """Log-probs ``[B, L]`` of the true tokens when the ``masked_BL`` positions are replaced
    by MASK (values at unmasked positions are returned too; callers weight them out)."""
    inp = jnp.where(masked_BL, model.config.mask_token_id, tokens_BL)
    return token_logprobs(aligned(model, inp, attention_mask_BL), tokens_BL)


def d1_inputs(key: jax.Array, tokens_BL: jax.Array, prompt_mask_BL: jax.Array,
              completion_mask_BL: jax.Array, p_mask_prompt: float, mask_id: int
              ) -> tuple[jax.Array, jax.Array]:
    """d1's one-step estimator input: the whole completion masked, each prompt token masked
    with probability ``p_mask_prompt`` (a fresh draw per key: one key per inner iteration).

    Returns:
      ``(inputs_BL, masked_BL)``.
    """
    pm = (jax.random.uniform(key, tokens_BL.shape) < p_mask_prompt) & prompt_mask_BL.astype(bool)
    masked = pm | completion_mask_BL.astype(bool)
    return jnp.where(masked, mask_id, tokens_BL), masked


def states_from_steps(step_map_RG: jax.Array, starts_RK: jax.Array, ends_RK: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """Trajectory states over the generated positions.

    Returns:
      ``input_masked [R, K, G]`` (tokens committed at a step ``>= start`` are masked) and
      ``targets [R, K, G]`` (tokens committed at ``start <= step < end``).
    """
    s = step_map_RG[:, None, :]
    masked = s >= starts_RK[:, :, None]
    targets = masked & (s < ends_RK[:, :, None])
    return masked, targets


def tracerl_ranges(num_steps: int, shrinkage: int) -> tuple[list[int], list[int]]:
    """TraceRL's grouping: every ``shrinkage`` consecutive steps form one state."""
    if shrinkage < 1:
        raise ValueError(f"shrinkage must be >= 1, got {shrinkage}")
    starts = list(range(0, num_steps, shrinkage))
    return starts, [min(s + shrinkage, num_steps) for s in starts]


def tracerl_states(step_map_RG: jax.Array, num_steps: int, shrinkage: int
                   ) -> tuple[jax.Array, jax.Array]:
    """States for TraceRL with shrinkage ``s`` (see :func:`states_from_steps`)."""
    starts, ends = tracerl_ranges(num_steps, shrinkage)
    r = step_map_RG.shape[0]
    return states_from_steps(step_map_RG,
                             jnp.broadcast_to(jnp.asarray(starts, jnp.int32), (r, len(starts))),
                             jnp.broadcast_to(jnp.asarray(ends, jnp.int32), (r, len(ends))))


def state_batch(sequences_RL: jax.Array, prompt_len: int, input_masked_RKG: jax.Array,
                targets_RKG: jax.Array, mask_id: int) -> dict[str, jax.Array]:
    """Flattens states into model inputs ``[R*K, L]``: ``tokens`` (the clean sequence),
    ``inputs`` (generated positions masked per state) and ``targets`` (loss positions)."""
    r, k, g = input_masked_RKG.shape
    seq = jnp.repeat(sequences_RL, k, axis=0)
    pad = jnp.zeros((r * k, prompt_len), jnp.bool_)
    masked = jnp.concatenate([pad, input_masked_RKG.reshape(r * k, g)], axis=1)
    targets = jnp.concatenate([pad, targets_RKG.reshape(r * k, g)], axis=1)
    return {"tokens": seq, "inputs": jnp.where(masked, mask_id, seq), "targets": targets}


def stratified_mask_counts(key: jax.Array, batch: int, target_len: int) -> jax.Array:
    """LLaDA's stratified mask counts: one ``k ~ U{1..T}`` and ``batch`` counts evenly spaced
    by ``T / batch`` from it, wrapped into ``1..T``."""
    k = jax.random.randint(key, (), 1, target_len + 1)
    x = jnp.round(k + jnp.arange(batch) * (target_len / batch)).astype(jnp.int32)
    return (x - 1) % target_len + 1


def mc_log_likelihood(model, key: jax.Array, prompt_P: jax.Array, answer_A: jax.Array, *,
                      mc_num: int = 128, batch: int = 16) -> jax.Array:
    """LLaDA's Monte-Carlo estimate of ``log p(answer | prompt)`` (``get_log_likelihood``).

    ``mc_num / batch`` rounds; in each, ``batch`` copies get stratified mask counts ``x_i``,
    exactly ``x_i`` answer positions masked (uniformly), and the loss
    ``sum CE / (x_i / T)``; the estimate is minus the mean loss per copy. The prompt is never
    masked.
    """
    if mc_num % batch:
        raise ValueError(f"mc_num {mc_num} must be a multiple of batch {batch}")
    p, t = prompt_P.shape[0], answer_A.shape[0]
    seq = jnp.concatenate([prompt_P, answer_A])[None].repeat(batch, 0)

    def one_round(key):
        kc, kp = jax.random.split(key)
        x = stratified_mask_counts(kc, batch, t)
        perm_keys = jax.random.split(kp, batch)
        ranks = jax.vmap(lambda kk: jax.random.permutation(kk, t))(perm_keys)
        is_mask = ranks < x[:, None]
        masked = jnp.concatenate([jnp.zeros((batch, p), bool), is_mask], 1)
        logp = score_masked(model, seq, masked)
        per_copy = -(jnp.where(masked, logp, 0.0)).sum(-1) / (x / t)
        return per_copy.sum() / batch

    losses = jax.lax.map(one_round, jax.random.split(key, mc_num // batch))
    return -losses.mean()
