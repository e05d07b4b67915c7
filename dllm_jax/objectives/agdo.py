"""AGDO: attention-guided denoising order and loss weighting (arXiv 2606.12273).

See docs/objectives.md, "AGDO".

From one last-layer attention pass on a completed sequence (``A_bar = mean_h A^{(L,h)}``, the
model's ``return_attn_mean=True`` output): the denoising order (greedy top-n by
``S_i = sum_{k in U} A_bar[i, k]``, U growing from the prompt), the influence
``I_k = (1/N) sum_i A_bar[i, k]``, the SFT weight ``1 + gamma I_k`` and the RL advantage
``A + sign(A) delta I_k``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from dllm_jax.objectives.losses import tracerl_loss

NEG = -jnp.inf


def attention_order(attn_BLL: jax.Array, prompt_mask_BL: jax.Array, response_mask_BL: jax.Array,
                    n_per_step: int, num_steps: int | None = None) -> jax.Array:
    """AGDO's greedy denoising order from one head-averaged last-layer attention map.

    ``U`` starts as the prompt; step s moves the ``n_per_step`` not-yet-ordered response tokens
    with the largest ``S_i = sum_{k in U} A_bar[i, k]`` into ``U``, then ``S`` is recomputed
    with the same ``A_bar``. Ties go to the lower position. A ``lax.scan`` over steps.

    Args:
      attn_BLL: ``A_bar`` ``[B, L, L]`` (query i, key k), e.g. the model's ``attn_mean``.
      prompt_mask_BL: 1 on prompt tokens (the initial ``U``).
      response_mask_BL: 1 on the response tokens to order (padding 0).
      n_per_step: tokens committed per step (>= 1).
      num_steps: scan length (static); default ``ceil(L / n_per_step)``, enough for any
        response; ``ceil(max response length / n_per_step)`` suffices.

    Returns:
      int32 ``[B, L]``: the step at which each response token joins ``U`` (``-1`` outside the
      response). Every response token gets exactly one step; each step has ``n_per_step``
      tokens except possibly the last.
    """
    if jnp.ndim(attn_BLL) != 3 or jnp.shape(attn_BLL)[1] != jnp.shape(attn_BLL)[2]:
        raise ValueError(f"attn_BLL must be [B, L, L], got {tuple(jnp.shape(attn_BLL))}")
    b, l, _ = attn_BLL.shape
    for name, m in (("prompt_mask_BL", prompt_mask_BL), ("response_mask_BL", response_mask_BL)):
        if tuple(jnp.shape(m)) != (b, l):
            raise ValueError(f"{name} must have shape ({b}, {l}), got {tuple(jnp.shape(m))}")
    if n_per_step < 1:
        raise ValueError(f"n_per_step must be >= 1, got {n_per_step}")
    num_steps = math.ceil(l / n_per_step) if num_steps is None else num_steps
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    resp = jnp.asarray(response_mask_BL).astype(bool)
    attn = attn_BLL.astype(jnp.float32)

    def step(carry, s):
        u, order = carry
        score = jnp.einsum("bik,bk->bi", attn, u.astype(jnp.float32))
        open_ = resp & (order < 0)
        key = jnp.where(open_, score, NEG)
        rank = jnp.argsort(jnp.argsort(-key, axis=-1, stable=True), axis=-1)
        pick = open_ & (rank < n_per_step)
        return (u | pick, jnp.where(pick, s, order)), None

    init = (jnp.asarray(prompt_mask_BL).astype(bool), jnp.full((b, l), -1, jnp.int32))
    (_, order), _ = jax.lax.scan(step, init, jnp.arange(num_steps, dtype=jnp.int32))
    return order


def influence(attn_BLL: jax.Array, mask_BL: jax.Array | None = None) -> jax.Array:
    """Influence ``I_k = (1/N) sum_i A_bar[i, k]``: attention key k receives, averaged over the
    N real queries (``mask_BL``; all L when None). Equals the model's ``aux["I"]``.

    Returns:
      float32 ``[B, L]``.
    """
    if mask_BL is None:
        return attn_BLL.astype(jnp.float32).mean(1)
    q = mask_BL.astype(jnp.float32)
    return jnp.einsum("bik,bi->bk", attn_BLL.astype(jnp.float32), q) / jnp.maximum(
        q.sum(-1, keepdims=True), 1.0)


def agdo_sft_loss(logp_SL: jax.Array, targets_SL: jax.Array, influence_SL: jax.Array,
                  gamma: float) -> tuple[jax.Array, dict]:
    """AGDO-SFT: per state, ``-mean over its targets of (1 + gamma I_k) log p_k``; mean over
    the states that have targets. ``gamma = 0`` is the unweighted (order-only) loss.

    Args:
      logp_SL: log-probs ``[S, L]`` of the clean tokens in each state's input (S = B*K rows
        from :func:`dllm_jax.objectives.scoring.state_batch`).
      targets_SL: 0/1 tokens committed at the state's step(s).
      influence_SL: ``I_k`` of the row's sequence, repeated per state.
      gamma: weight strength (paper: 100 for MATH500).

    Returns:
      ``(loss, aux)``.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if not jnp.shape(logp_SL) == jnp.shape(targets_SL) == jnp.shape(influence_SL):
        raise ValueError(f"logp_SL {jnp.shape(logp_SL)}, targets_SL {jnp.shape(targets_SL)} "
                         f"and influence_SL {jnp.shape(influence_SL)} must share one shape")
    m = targets_SL.astype(jnp.float32)
    w = 1.0 + gamma * influence_SL
    per_state = -(w * logp_SL * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
    has = (m.sum(-1) > 0).astype(jnp.float32)
    loss = (per_state * has).sum() / jnp.maximum(has.sum(), 1.0)
    return loss, {"loss": loss}


def agdo_advantages(adv_S: jax.Array, influence_SL: jax.Array, delta: float) -> jax.Array:
    """Per-token ``A'_k = A + sign(A) * delta * I_k`` (``[S, L]``; sign(0) = 0)."""
    return adv_S[:, None] + jnp.sign(adv_S)[:, None] * delta * influence_SL


def agdo_rl_loss(logp_SL, logp_old_SL, logp_ref_SL, adv_S, influence_SL, target_mask_SL,
                 num_rollouts: int, *, delta: float = 5.0, eps: float = 0.2, beta: float = 0.0
                 ) -> tuple[jax.Array, dict]:
    """AGDO-RL: the trajectory loss (:func:`~dllm_jax.objectives.losses.tracerl_loss`) over
    attention-ordered states with per-token advantages :func:`agdo_advantages`; ``delta = 0``
    is the plain trajectory loss."""
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    adv_tok = agdo_advantages(adv_S, influence_SL, delta)
    return tracerl_loss(logp_SL, logp_old_SL, logp_ref_SL, adv_S, target_mask_SL, num_rollouts,
                        eps=eps, beta=beta, adv_SL=adv_tok)
