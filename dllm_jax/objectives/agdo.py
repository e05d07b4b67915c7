"""AGDO: attention-guided denoising order and loss weighting (SPEC 6, arXiv 2606.12273).

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
                    n_per_step: int) -> jax.Array:
    """Step index at which each response token joins U (``-1`` outside the response).

    Step s moves the ``n_per_step`` response tokens with the largest ``S_i`` into U, then S is
    recomputed with the same ``A_bar`` for the rest. Ties go to the lower position.
    """
    b, l, _ = attn_BLL.shape
    num_steps = math.ceil(l / n_per_step)
    resp = response_mask_BL.astype(bool)

    def step(carry, s):
        u, order = carry
        score = jnp.einsum("bik,bk->bi", attn_BLL.astype(jnp.float32), u.astype(jnp.float32))
        open_ = resp & (order < 0)
        key = jnp.where(open_, score, NEG)
        rank = jnp.argsort(jnp.argsort(-key, axis=-1, stable=True), axis=-1)
        pick = open_ & (rank < n_per_step)
        return (u | pick, jnp.where(pick, s, order)), None

    init = (prompt_mask_BL.astype(bool), jnp.full((b, l), -1, jnp.int32))
    (_, order), _ = jax.lax.scan(step, init, jnp.arange(num_steps))
    return order


def influence(attn_BLL: jax.Array, mask_BL: jax.Array | None = None) -> jax.Array:
    """``I_k``: attention received by key k, averaged over the (real) queries."""
    if mask_BL is None:
        return attn_BLL.astype(jnp.float32).mean(1)
    q = mask_BL.astype(jnp.float32)
    return jnp.einsum("bik,bi->bk", attn_BLL.astype(jnp.float32), q) / jnp.maximum(
        q.sum(-1, keepdims=True), 1.0)


def agdo_sft_loss(logp_SL: jax.Array, targets_SL: jax.Array, influence_SL: jax.Array,
                  gamma: float) -> tuple[jax.Array, dict]:
    """Order-based SFT: per state, ``-mean over its targets of (1 + gamma I_k) log p_k``;
    mean over states that have targets. ``gamma = 0`` is the unweighted (order-only) loss."""
    m = targets_SL.astype(jnp.float32)
    w = 1.0 + gamma * influence_SL
    per_state = -(w * logp_SL * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
    has = (m.sum(-1) > 0).astype(jnp.float32)
    loss = (per_state * has).sum() / jnp.maximum(has.sum(), 1.0)
    return loss, {"loss": loss}


def agdo_advantages(adv_S: jax.Array, influence_SL: jax.Array, delta: float) -> jax.Array:
    """Per-token ``A'_k = A + sign(A) * delta * I_k``."""
    return adv_S[:, None] + jnp.sign(adv_S)[:, None] * delta * influence_SL


def agdo_rl_loss(logp_SL, logp_old_SL, logp_ref_SL, adv_S, influence_SL, target_mask_SL,
                 num_rollouts: int, *, delta: float = 5.0, eps: float = 0.2, beta: float = 0.0
                 ) -> tuple[jax.Array, dict]:
    """GRPO-style trajectory loss over attention-ordered states with AGDO's advantages."""
    adv_tok = agdo_advantages(adv_S, influence_SL, delta)
    return tracerl_loss(logp_SL, logp_old_SL, logp_ref_SL, adv_S, target_mask_SL, num_rollouts,
                        eps=eps, beta=beta, adv_SL=adv_tok)
