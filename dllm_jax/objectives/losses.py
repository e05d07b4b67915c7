"""Training objectives as pure functions of arrays returning ``(loss, aux)`` (docs/objectives.md).

No function here runs a model: scoring (``dllm_jax.objectives.scoring``) turns a model and
inputs into per-token log-probs; these functions turn log-probs into losses. Shapes: B rows,
L positions, S trajectory states (rows of state-level inputs), G group size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _float(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _same_shape(**arrays: jax.Array | None) -> None:
    """Raises ValueError naming the arrays when their shapes differ (``None`` is skipped)."""
    shapes = {k: tuple(jnp.shape(v)) for k, v in arrays.items() if v is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError("shape mismatch: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


def _rank(name: str, x: jax.Array, rank: int) -> None:
    if jnp.ndim(x) != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(jnp.shape(x))}")


def forward_mask(key: jax.Array, tokens_BL: jax.Array, maskable_BL: jax.Array, mask_id: int,
                 eps: float = 1e-3) -> tuple[jax.Array, jax.Array, jax.Array]:
    """LLaDA's forward process.

    Per row ``t ~ U(0, 1)`` and ``p_mask = (1 - eps) t + eps``; each maskable token is replaced
    by ``mask_id`` independently with probability ``p_mask``.

    Args:
      key: PRNG key (split here into one draw for ``t`` and one for the masks).
      tokens_BL: int token ids ``[B, L]``.
      maskable_BL: ``[B, L]`` bool/0-1, positions that may be masked (e.g. the response for
        SFT, every real token for pre-training).
      mask_id: the MASK token id.
      eps: minimum masking probability, in ``[0, 1)``.

    Returns:
      ``(noisy_BL, masked_BL, p_mask_B)``: the corrupted tokens, the bool mask of replaced
      positions and the per-row masking probability (float32).
    """
    _rank("tokens_BL", tokens_BL, 2)
    _same_shape(tokens_BL=tokens_BL, maskable_BL=maskable_BL)
    if not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    b, l = tokens_BL.shape
    kt, km = jax.random.split(key)
    p_mask = (1.0 - eps) * jax.random.uniform(kt, (b,), jnp.float32) + eps
    masked = ((jax.random.uniform(km, (b, l), jnp.float32) < p_mask[:, None])
              & jnp.asarray(maskable_BL).astype(jnp.bool_))
    return jnp.where(masked, mask_id, tokens_BL), masked, p_mask


def token_logprobs(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
    """``log_softmax(logits)[target]`` computed in float32.

    Args:
      logits_BLV: ``[B, L, V]`` logits (any float dtype), already aligned so that position i
        predicts token i (see ``scoring.aligned``).
      targets_BL: ``[B, L]`` int token ids.

    Returns:
      ``logp_BL`` float32 (float64 under x64 when the logits are float64).
    """
    if jnp.shape(logits_BLV)[:-1] != jnp.shape(targets_BL):
        raise ValueError(f"logits_BLV {tuple(jnp.shape(logits_BLV))} and targets_BL "
                         f"{tuple(jnp.shape(targets_BL))} disagree on the leading axes")
    logp = jax.nn.log_softmax(_float(logits_BLV), axis=-1)
    return jnp.take_along_axis(logp, jnp.asarray(targets_BL)[..., None].astype(jnp.int32),
                               axis=-1)[..., 0]


def masked_diffusion_loss(logp_BL: jax.Array, masked_BL: jax.Array, p_mask_B: jax.Array,
                          valid_BL: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Pre-training loss ``-sum_{b,i} 1[masked] log p_{b,i} / p_mask_b / (B * L)``.

    Args:
      logp_BL: log-probs of the clean tokens given the noisy input.
      masked_BL: positions that were masked.
      p_mask_B: per-row masking probability used by :func:`forward_mask`.
      valid_BL: optional 0/1 weights (e.g. padding 0); the divisor stays ``B * L`` as in LLaDA.

    Returns:
      ``(loss, aux)`` with ``aux = {"loss", "masked_tokens"}``.
    """
    _rank("logp_BL", logp_BL, 2)
    _same_shape(logp_BL=logp_BL, masked_BL=masked_BL, valid_BL=valid_BL)
    b, l = logp_BL.shape
    if jnp.shape(p_mask_B) != (b,):
        raise ValueError(f"p_mask_B must have shape ({b},), got {tuple(jnp.shape(p_mask_B))}")
    m = jnp.asarray(masked_BL).astype(logp_BL.dtype)
    if valid_BL is not None:
        m = m * jnp.asarray(valid_BL).astype(logp_BL.dtype)
    nll = -(logp_BL * m / p_mask_B[:, None]).sum()
    loss = nll / (b * l)
    return loss, {"loss": loss, "masked_tokens": m.sum()}


def sft_loss(logp_BL: jax.Array, masked_BL: jax.Array, p_mask_B: jax.Array,
             response_mask_BL: jax.Array) -> tuple[jax.Array, dict]:
    """SFT loss : the prompt is never masked; per row
    ``-sum_i 1[masked_i] 1[response_i] log p_i / p_mask / max(response_len, 1)``, mean over rows.

    Args:
      logp_BL: log-probs of the clean tokens given the noisy input.
      masked_BL: positions that were masked (outside the response they are ignored).
      p_mask_B: per-row masking probability.
      response_mask_BL: 0/1 response positions (its row sum is the response length).

    Returns:
      ``(loss, aux)`` with ``aux = {"loss", "masked_tokens"}``.
    """
    _rank("logp_BL", logp_BL, 2)
    _same_shape(logp_BL=logp_BL, masked_BL=masked_BL, response_mask_BL=response_mask_BL)
    if jnp.shape(p_mask_B) != logp_BL.shape[:1]:
        raise ValueError(f"p_mask_B must have shape ({logp_BL.shape[0]},), "
                         f"got {tuple(jnp.shape(p_mask_B))}")
    resp = jnp.asarray(response_mask_BL).astype(logp_BL.dtype)
    m = jnp.asarray(masked_BL).astype(logp_BL.dtype) * resp
    per_row = -(logp_BL * m).sum(-1) / p_mask_B / jnp.maximum(resp.sum(-1), 1.0)
    loss = per_row.mean()
    return loss, {"loss": loss, "masked_tokens": m.sum()}


def group_advantages(rewards_R: jax.Array, group_size: int, mode: str = "center") -> jax.Array:
    """Group-relative advantages over consecutive groups of ``group_size`` rollouts.

    Args:
      rewards_R: ``[R]`` rewards, rollouts of one prompt adjacent (R a multiple of the group).
      group_size: rollouts per prompt.
      mode: ``center``: ``R - mean`` (d1); ``zscore``: ``(R - mean) / std`` with the
        population std, 0 when the group is uniform (TraceRL, AGDO).

    Returns:
      ``[R]`` advantages (at least float32).
    """
    if mode not in ("center", "zscore"):
        raise ValueError(f"unknown advantage mode {mode!r}; choose 'center' or 'zscore'")
    n = jnp.size(rewards_R)
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} rewards cannot be split into groups of {group_size}")
    r = _float(rewards_R).reshape(-1, group_size)
    a = r - r.mean(-1, keepdims=True)
    if mode == "zscore":
        sd = r.std(-1, keepdims=True)
        a = jnp.where(sd > 0, a / jnp.where(sd > 0, sd, 1.0), 0.0)
    return a.reshape(-1)


def completion_mask_until_eos(tokens_BG: jax.Array, eos_id: int) -> jax.Array:
    """1 for completion tokens up to and including the first EOS."""
    is_eos = (tokens_BG == eos_id).astype(jnp.int32)
    before = jnp.cumsum(is_eos, axis=-1) - is_eos
    return (before == 0).astype(jnp.float32)


def k3_kl(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """``exp(ref - logp) - (ref - logp) - 1`` (non-negative, unbiased for KL(pi || ref))."""
    d = logp_ref - logp
    return jnp.exp(d) - d - 1.0


def clipped_objective(logp: jax.Array, logp_old: jax.Array, adv: jax.Array, eps: float
                      ) -> tuple[jax.Array, jax.Array]:
    """PPO's ``min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` per token, and the clip indicator."""
    rho = jnp.exp(logp - logp_old)
    unclipped = rho * adv
    clipped = jnp.clip(rho, 1.0 - eps, 1.0 + eps) * adv
    return jnp.minimum(unclipped, clipped), (clipped < unclipped).astype(jnp.float32)


def diffu_grpo_loss(logp_BL: jax.Array, logp_old_BL: jax.Array, logp_ref_BL: jax.Array | None,
                    adv_B: jax.Array, completion_mask_BL: jax.Array, *, eps: float = 0.5,
                    beta: float = 0.04) -> tuple[jax.Array, dict]:
    """diffu-GRPO (d1).

    Per token ``-min(rho A, clip(rho, 1 - eps, 1 + eps) A) + beta * k3``, averaged over each
    row's completion tokens (build the mask with :func:`completion_mask_until_eos` to stop at
    the first EOS), then over rows.

    Args:
      logp_BL: current log-probs (from d1's one-step estimator).
      logp_old_BL: the same under the rollout policy (constant).
      logp_ref_BL: the same under the reference policy, or None (no KL term).
      adv_B: per-row advantages.
      completion_mask_BL: 0/1 tokens in the loss.
      eps: PPO clip range.
      beta: KL weight.

    Returns:
      ``(loss, aux)`` with ``aux = {"loss", "kl", "clip_frac"}``.
    """
    _same_shape(logp_BL=logp_BL, logp_old_BL=logp_old_BL, logp_ref_BL=logp_ref_BL,
                completion_mask_BL=completion_mask_BL)
    if jnp.shape(adv_B) != jnp.shape(logp_BL)[:1]:
        raise ValueError(f"adv_B must have shape ({jnp.shape(logp_BL)[0]},), "
                         f"got {tuple(jnp.shape(adv_B))}")
    m = completion_mask_BL.astype(jnp.float32)
    obj, clip_frac = clipped_objective(logp_BL, logp_old_BL, adv_B[:, None], eps)
    per_tok = -obj
    kl = jnp.zeros_like(per_tok) if logp_ref_BL is None else k3_kl(logp_BL, logp_ref_BL)
    if logp_ref_BL is not None and beta:
        per_tok = per_tok + beta * kl
    n = jnp.maximum(m.sum(-1), 1.0)
    loss = ((per_tok * m).sum(-1) / n).mean()
    aux = {"loss": loss, "kl": ((kl * m).sum(-1) / n).mean(),
           "clip_frac": (clip_frac * m).sum() / jnp.maximum(m.sum(), 1.0)}
    return loss, aux


def tracerl_loss(logp_SL: jax.Array, logp_old_SL: jax.Array, logp_ref_SL: jax.Array | None,
                 adv_S: jax.Array, target_mask_SL: jax.Array, num_rollouts: int, *,
                 eps: float = 0.2, beta: float = 0.01, adv_SL: jax.Array | None = None
                 ) -> tuple[jax.Array, dict]:
    """TraceRL's trajectory loss.

    Per state, the mean over its target tokens of ``-clipped objective (+ beta k3)``; summed
    over states (a state without targets adds 0) and divided by the rollout count, i.e. the sum
    over a rollout's states averaged over rollouts.

    Args:
      logp_SL: current log-probs ``[S, L]``, one row per state (``state_batch``).
      logp_old_SL: rollout-policy log-probs.
      logp_ref_SL: reference log-probs or None.
      adv_S: per-state advantages (the rollout's advantage repeated per state).
      target_mask_SL: 0/1 tokens committed in the state's step range.
      num_rollouts: rollouts the S states came from.
      eps: PPO clip range.
      beta: KL weight.
      adv_SL: optional per-token advantages replacing ``adv_S`` (AGDO-RL).

    Returns:
      ``(loss, aux)`` with ``aux = {"loss", "states", "kl", "clip_frac"}`` (``kl``: the mean
      k3 estimate over target tokens, 0 without a reference).
    """
    _same_shape(logp_SL=logp_SL, logp_old_SL=logp_old_SL, logp_ref_SL=logp_ref_SL,
                target_mask_SL=target_mask_SL, adv_SL=adv_SL)
    if num_rollouts < 1:
        raise ValueError(f"num_rollouts must be >= 1, got {num_rollouts}")
    m = target_mask_SL.astype(jnp.float32)
    adv = adv_S[:, None] if adv_SL is None else adv_SL
    obj, clip_frac = clipped_objective(logp_SL, logp_old_SL, adv, eps)
    per_tok = -obj
    kl = jnp.zeros_like(per_tok) if logp_ref_SL is None else k3_kl(logp_SL, logp_ref_SL)
    if logp_ref_SL is not None and beta:
        per_tok = per_tok + beta * kl
    per_state = (per_tok * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
    has = (m.sum(-1) > 0).astype(jnp.float32)
    loss = (per_state * has).sum() / num_rollouts
    aux = {"loss": loss, "states": has.sum(),
           "kl": (kl * m).sum() / jnp.maximum(m.sum(), 1.0),
           "clip_frac": (clip_frac * m).sum() / jnp.maximum(m.sum(), 1.0)}
    return loss, aux


def wd1_loss(logp_BL: jax.Array, completion_mask_BL: jax.Array, adv_B: jax.Array,
             group_size: int) -> tuple[jax.Array, dict]:
    """wd1 (ratio-free).

    With ``w+ = softmax_group(A)`` and ``w- = softmax_group(-A)`` per group of
    ``group_size`` rollouts, ``-sum_i w+_i sum_k log pi(o_ik) + sum_i w-_i sum_k log pi(o_ik)``,
    mean over groups.

    Args:
      logp_BL: current log-probs of the completions.
      completion_mask_BL: 0/1 completion tokens.
      adv_B: per-rollout advantages (group members adjacent).
      group_size: rollouts per prompt.

    Returns:
      ``(loss, aux)``.
    """
    _same_shape(logp_BL=logp_BL, completion_mask_BL=completion_mask_BL)
    b = jnp.shape(logp_BL)[0]
    if group_size < 1 or b % group_size or jnp.shape(adv_B) != (b,):
        raise ValueError(f"wd1 needs adv_B of shape ({b},) and B={b} a multiple of "
                         f"group_size={group_size}, got adv_B {tuple(jnp.shape(adv_B))}")
    seq_logp = (logp_BL * completion_mask_BL.astype(jnp.float32)).sum(-1).reshape(-1, group_size)
    a = _float(adv_B).reshape(-1, group_size)
    w_pos = jax.nn.softmax(a, axis=-1)
    w_neg = jax.nn.softmax(-a, axis=-1)
    per_group = -(w_pos * seq_logp).sum(-1) + (w_neg * seq_logp).sum(-1)
    loss = per_group.mean()
    return loss, {"loss": loss}
