"""Scoring: run the model on constructed inputs and return per-token log-probs.

The model returns aligned logits (Dream's shift is applied inside it, see docs/model.md), so
every loss sees log-probs where position i scores token i. The input builders (d1's one-step
estimator, TraceRL / ATPO / AGDO trajectory states, LLaDA's Monte-Carlo masks) are pure array
functions; only :func:`score_masked` and :func:`mc_log_likelihood` call the network.

Shapes: B rows, L = P + G positions (prompt P, generation G), K states per row, A answer
length, N Monte-Carlo copies per round.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_jax.objectives.losses import token_logprobs


def _check_same_shape(**arrays: jax.Array | None) -> None:
    shapes = {k: tuple(jnp.shape(v)) for k, v in arrays.items() if v is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError("shape mismatch: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


def _mask_id(model) -> int:
    mask_id = model.config.mask_token_id
    if mask_id is None:
        raise ValueError("model.config.mask_token_id is None; a masked-diffusion model is needed")
    return mask_id


def aligned(model, tokens_BL: jax.Array, attention_mask_BL: jax.Array | None = None
            ) -> jax.Array:
    """Float32 logits ``[B, L, V]`` where position i predicts token i."""
    return model(tokens_BL, attention_mask_BL).astype(jnp.float32)


def score_masked(model, tokens_BL: jax.Array, masked_BL: jax.Array,
                 attention_mask_BL: jax.Array | None = None) -> jax.Array:
    """Log-probs of the true tokens when the ``masked_BL`` positions are replaced by MASK.

    Args:
      model: a ``Transformer`` (or anything with ``config`` and the same call signature).
      tokens_BL: clean token ids ``[B, L]``.
      masked_BL: bool ``[B, L]``, positions fed to the model as MASK.
      attention_mask_BL: optional ``[B, L]`` 1 for real tokens.

    Returns:
      ``logp_BL`` float32: ``log p(tokens_BL[b, i] | input)`` at every position (values at
      unmasked positions are returned too; losses weight them out).
    """
    _check_same_shape(tokens_BL=tokens_BL, masked_BL=masked_BL,
                      attention_mask_BL=attention_mask_BL)
    inp = jnp.where(masked_BL, _mask_id(model), tokens_BL)
    return token_logprobs(aligned(model, inp, attention_mask_BL), tokens_BL)


def d1_inputs(key: jax.Array, tokens_BL: jax.Array, prompt_mask_BL: jax.Array,
              completion_mask_BL: jax.Array, p_mask_prompt: float, mask_id: int
              ) -> tuple[jax.Array, jax.Array]:
    """d1's one-step estimator input (diffu-GRPO; docs/objectives.md).

    The whole completion is masked and each prompt token is masked independently with
    probability ``p_mask_prompt``; pass a fresh key per inner iteration (d1 re-draws the prompt
    mask every iteration).

    Args:
      key: PRNG key for the prompt mask.
      tokens_BL: the rollout ``[prompt | completion]`` ``[B, L]``.
      prompt_mask_BL: 1 on (real) prompt tokens.
      completion_mask_BL: 1 on completion tokens.
      p_mask_prompt: prompt masking probability in ``[0, 1]`` (d1: 0.15).
      mask_id: the MASK token id.

    Returns:
      ``(inputs_BL, masked_BL)``.
    """
    _check_same_shape(tokens_BL=tokens_BL, prompt_mask_BL=prompt_mask_BL,
                      completion_mask_BL=completion_mask_BL)
    if not 0 <= p_mask_prompt <= 1:
        raise ValueError(f"p_mask_prompt must be in [0, 1], got {p_mask_prompt}")
    draw = jax.random.uniform(key, jnp.shape(tokens_BL), jnp.float32) < p_mask_prompt
    masked = (draw & jnp.asarray(prompt_mask_BL).astype(bool)) | jnp.asarray(
        completion_mask_BL).astype(bool)
    return jnp.where(masked, mask_id, tokens_BL), masked


# ----------------------------------------------------------------------------- trajectory states
def states_from_steps(step_map_BG: jax.Array, starts_BK: jax.Array, ends_BK: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """Trajectory states over the generated positions (TraceRL, ATPO, AGDO).

    State k of row b stands for the canvas just before step ``starts_BK[b, k]``: every
    generated token committed at a step ``>= start`` is still masked, and the loss targets the
    tokens committed in ``start <= step < end``.

    Args:
      step_map_BG: int ``[B, G]``, the 0-based step at which each generated position was
        committed (a negative value marks a position never committed, e.g. padding: it is
        never masked and never a target).
      starts_BK: int ``[B, K]`` first step of each state.
      ends_BK: int ``[B, K]`` one past its last step (``start + 1`` for a single step).

    Returns:
      ``(input_masked_BKG, targets_BKG)``, both bool.
    """
    if jnp.ndim(step_map_BG) != 2:
        raise ValueError(f"step_map_BG must be [B, G], got shape {tuple(jnp.shape(step_map_BG))}")
    _check_same_shape(starts_BK=starts_BK, ends_BK=ends_BK)
    if jnp.shape(starts_BK)[:1] != jnp.shape(step_map_BG)[:1] or jnp.ndim(starts_BK) != 2:
        raise ValueError(f"starts_BK {tuple(jnp.shape(starts_BK))} must be [B, K] with the B of "
                         f"step_map_BG {tuple(jnp.shape(step_map_BG))}")
    s = jnp.asarray(step_map_BG)[:, None, :]
    masked = s >= jnp.asarray(starts_BK)[:, :, None]
    targets = masked & (s < jnp.asarray(ends_BK)[:, :, None])
    return masked, targets


def tracerl_ranges(num_steps: int, shrinkage: int) -> tuple[list[int], list[int]]:
    """TraceRL's grouping: every ``shrinkage`` consecutive steps form one state.

    Returns:
      ``(starts, ends)`` lists of length ``ceil(num_steps / shrinkage)``.
    """
    if shrinkage < 1:
        raise ValueError(f"shrinkage must be >= 1, got {shrinkage}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    starts = list(range(0, num_steps, shrinkage))
    return starts, [min(s + shrinkage, num_steps) for s in starts]


def tracerl_states(step_map_BG: jax.Array, shrinkage: int, *, num_steps: int
                   ) -> tuple[jax.Array, jax.Array]:
    """TraceRL's states: steps merged ``shrinkage`` at a time (see :func:`states_from_steps`).

    Args:
      step_map_BG: int ``[B, G]`` commit step per generated position.
      shrinkage: ``s``, consecutive steps per state (TraceRL default 8).
      num_steps: ``T``, total denoising steps of the rollouts (static).

    Returns:
      ``(input_masked_BKG, targets_BKG)`` with ``K = ceil(T / s)``.
    """
    starts, ends = tracerl_ranges(num_steps, shrinkage)
    b = jnp.shape(step_map_BG)[0]
    return states_from_steps(step_map_BG,
                             jnp.broadcast_to(jnp.asarray(starts, jnp.int32), (b, len(starts))),
                             jnp.broadcast_to(jnp.asarray(ends, jnp.int32), (b, len(ends))))


def order_states(order_BG: jax.Array, num_steps: int, shrinkage: int = 1
                 ) -> tuple[jax.Array, jax.Array]:
    """AGDO's order-based states: the state at step t masks exactly the tokens of steps >= t.

    Args:
      order_BG: int ``[B, G]`` step per generated position from
        :func:`dllm_jax.objectives.agdo.attention_order` (restricted to the generation region;
        ``-1`` for positions outside the response).
      num_steps: number of order steps (``ceil(response_len / n_per_step)``, static).
      shrinkage: consecutive steps merged into one state (1: one state per step).

    Returns:
      ``(input_masked_BKG, targets_BKG)`` as :func:`tracerl_states`.
    """
    return tracerl_states(order_BG, shrinkage, num_steps=num_steps)


def state_batch(sequences_BL: jax.Array, prompt_len: int, input_masked_BKG: jax.Array,
                targets_BKG: jax.Array, mask_id: int) -> dict[str, jax.Array]:
    """Flattens trajectory states into model inputs of ``B*K`` rows (row-major: b, then k).

    Args:
      sequences_BL: the final rollouts ``[prompt | generation]``, ``L = prompt_len + G``.
      prompt_len: P.
      input_masked_BKG / targets_BKG: from :func:`states_from_steps`.
      mask_id: the MASK token id.

    Returns:
      ``{"tokens": [B*K, L] clean, "inputs": [B*K, L] with masked positions = MASK,
      "masked": [B*K, L], "targets": [B*K, L]}`` (prompt columns never masked or targeted).
    """
    b, k, g = jnp.shape(input_masked_BKG)
    if jnp.shape(sequences_BL) != (b, prompt_len + g):
        raise ValueError(f"sequences_BL {tuple(jnp.shape(sequences_BL))} must be "
                         f"[{b}, prompt_len + G = {prompt_len + g}]")
    _check_same_shape(input_masked_BKG=input_masked_BKG, targets_BKG=targets_BKG)
    seq = jnp.repeat(sequences_BL, k, axis=0)
    pad = jnp.zeros((b * k, prompt_len), jnp.bool_)
    masked = jnp.concatenate([pad, jnp.reshape(input_masked_BKG, (b * k, g))], axis=1)
    targets = jnp.concatenate([pad, jnp.reshape(targets_BKG, (b * k, g))], axis=1)
    return {"tokens": seq, "inputs": jnp.where(masked, mask_id, seq), "masked": masked,
            "targets": targets}


# ----------------------------------------------------------------------------- MC likelihood
def stratified_mask_counts(key: jax.Array, batch: int, target_len: int) -> jax.Array:
    """LLaDA's stratified mask counts for one round of ``batch`` copies.

    One ``k ~ U{1..T}``; copy i gets ``round(k + i T / batch)`` wrapped into ``1..T``, so the
    counts cover ``1..T`` evenly (``batch = T`` gives every count exactly once).

    Returns:
      int32 ``[batch]``.
    """
    k = jax.random.randint(key, (), 1, target_len + 1)
    x = jnp.round(k + jnp.arange(batch) * (target_len / batch)).astype(jnp.int32)
    return (x - 1) % target_len + 1


def mc_masks(key: jax.Array, num_seqs: int, batch: int, target_len: int
             ) -> tuple[jax.Array, jax.Array]:
    """One Monte-Carlo round's answer masks: for each sequence, ``batch`` copies with
    stratified counts ``x`` and exactly ``x`` answer positions masked, uniformly at random.

    Returns:
      ``(is_mask [num_seqs, batch, A] bool, counts [num_seqs, batch] int32)``.
    """
    kc, kp = jax.random.split(key)
    counts = jax.vmap(lambda kk: stratified_mask_counts(kk, batch, target_len))(
        jax.random.split(kc, num_seqs))
    u = jax.random.uniform(kp, (num_seqs, batch, target_len))
    ranks = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)  # a uniform random permutation
    return ranks < counts[..., None], counts


def mc_log_likelihood(model, key: jax.Array, prompt_BP: jax.Array, answer_BA: jax.Array, *,
                      mc_num: int = 128, batch: int = 16, cfg_scale: float = 0.0) -> jax.Array:
    """LLaDA's Monte-Carlo estimate of ``log p(answer | prompt)`` (``get_log_likelihood``).

    ``mc_num / batch`` rounds; per round and sequence, ``batch`` copies with stratified mask
    counts ``x_i`` (:func:`mc_masks`) and loss ``sum_{masked} CE / (x_i / A)``; the estimate is
    minus the mean over rounds of the per-round loss averaged over copies. The prompt is never
    masked. ``cfg_scale > 0`` adds LLaDA's unsupervised classifier-free guidance (a second pass
    with the prompt masked, ``un + (cfg + 1) (cond - un)``).

    Args:
      model: the masked-diffusion model.
      key: PRNG key (split per round).
      prompt_BP: int ``[B, P]`` (or ``[P]``) prompts, unpadded.
      answer_BA: int ``[B, A]`` (or ``[A]``) answers.
      mc_num: total Monte-Carlo copies, a multiple of ``batch``.
      batch: copies per forward pass and sequence.
      cfg_scale: guidance scale (0: none).

    Returns:
      float32 ``[B]`` estimates (a scalar for 1-D inputs).
    """
    squeeze = jnp.ndim(prompt_BP) == 1
    prompt_BP, answer_BA = jnp.atleast_2d(prompt_BP), jnp.atleast_2d(answer_BA)
    if prompt_BP.shape[0] != answer_BA.shape[0]:
        raise ValueError(f"prompt_BP {prompt_BP.shape} and answer_BA {answer_BA.shape} need the "
                         "same number of rows")
    if batch < 1 or mc_num < batch or mc_num % batch:
        raise ValueError(f"mc_num {mc_num} must be a positive multiple of batch {batch}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    mask_id = _mask_id(model)
    b, p = prompt_BP.shape
    a = answer_BA.shape[1]
    seq_NL = jnp.repeat(jnp.concatenate([prompt_BP, answer_BA], axis=1), batch, axis=0)

    def one_round(round_key):
        is_mask, counts = mc_masks(round_key, b, batch, a)
        masked = jnp.concatenate([jnp.zeros((b * batch, p), bool),
                                  is_mask.reshape(b * batch, a)], axis=1)
        inp = jnp.where(masked, mask_id, seq_NL)
        logits = aligned(model, inp)
        if cfg_scale > 0:
            un = aligned(model, inp.at[:, :p].set(mask_id))
            logits = un + (cfg_scale + 1.0) * (logits - un)
        logp = token_logprobs(logits, seq_NL)
        ratio = counts.reshape(-1).astype(jnp.float32) / a
        loss_N = -jnp.where(masked, logp, 0.0).sum(-1) / ratio
        return loss_N.reshape(b, batch).mean(-1)

    rounds = mc_num // batch
    losses_RB = jax.lax.map(one_round, jax.random.split(key, rounds))
    out = -losses_RB.mean(0)
    return out[0] if squeeze else out

