"""What sampling returns: ``GenerateOutput``, the ``Trajectory`` record and its statistics.

``Recorder`` writes the record inside the compiled loop: per generated position when it
commits (``CommitRecord``, carried through the loop) and per step (``StepRecord``, the scan's
outputs). See docs/sampling.md, "Trajectory record". Shapes: B batch, N block length, V
vocabulary, G generated positions, T total steps.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dllm_jax.sampling.strategies import token_prob, top2_margin, top_values


class Trajectory(NamedTuple):
    """What happened during sampling (G generated positions, T total steps).

    A step is *valid* when it committed at least one token. A step that committed nothing (a
    block finished early under a confidence threshold, Dream's ``origin`` coin flips that
    commit nothing) changes nothing: its statistics are 0 and every consumer (the zone
    analysis, the ATPO selectors) skips it. See docs/sampling.md, "Trajectory record".

    Attributes:
      step_map: int32 ``[B, G]``, the 0-based global step at which each position was committed.
      confidence: f32 ``[B, G]``, the model's (untempered) probability of the committed token
        at the step it was committed.
      entropy: f32 ``[B, T]``, ``H_t``: mean entropy of the model's distribution over the
        positions still masked in the current block before step ``t`` commits (0 at invalid
        steps).
      margin: f32 ``[B, T]``, ``CM_t``: mean top-1 minus top-2 probability over the same set
        (0 at invalid steps).
      roec: f32 ``[B, T]``, ``|H_t - H_t'|`` with ``t'`` the previous valid step of the same
        block; 0 at the first valid step of each block and at invalid steps.
      num_committed: int32 ``[B, T]``.
      valid: bool ``[B, T]``, ``num_committed > 0``.
      attn_s: f32 ``[B, G]`` AGDO's ``S_i`` at commit time (only with ``record_attention``).
      top_ids, top_probs: int32 / f32 ``[B, G, k]``, the ``k = TOP_K`` most probable tokens of
        the model's (untempered) distribution at each position when it committed, most probable
        first (the alternatives the viewer shows).
    """

    step_map: jax.Array
    confidence: jax.Array
    entropy: jax.Array
    margin: jax.Array
    roec: jax.Array
    num_committed: jax.Array
    valid: jax.Array
    attn_s: jax.Array | None = None
    top_ids: jax.Array | None = None
    top_probs: jax.Array | None = None


TOP_K = 3


class IMHRecord(NamedTuple):
    """IMH's record: ``acceptance`` f32 ``[B, num_blocks]`` (accepted moves / (K - 1) per
    block) and ``log_prob`` f32 ``[B]`` (the sum over blocks of the chosen candidates' ``lp``:
    the model's log-probability along their own orders, or left to right with
    ``target='canonical'``)."""

    acceptance: jax.Array
    log_prob: jax.Array


class GenerateOutput(NamedTuple):
    """``sequences`` int32 ``[B, P + G]``: the prompt as given, then exactly what the sampler
    committed at every generated position (tokens after an EOS included, as LLaDA's and
    Dream's originals return them; cut with
    :func:`dllm_jax.data.batching.completion_until_eos` to decode or score);
    and the optional ``trajectory``."""

    sequences: jax.Array
    trajectory: Trajectory | IMHRecord | None = None


def step_stats(p_BNV: jax.Array, cand_BN: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean entropy and mean top-1/top-2 margin over the candidate positions."""
    ent = -jnp.sum(jnp.where(p_BNV > 0, p_BNV * jnp.log(jnp.where(p_BNV > 0, p_BNV, 1.0)), 0.0),
                   axis=-1)
    marg = top2_margin(p_BNV)
    w = cand_BN.astype(jnp.float32)
    denom = jnp.maximum(w.sum(-1), 1.0)
    return (ent * w).sum(-1) / denom, (marg * w).sum(-1) / denom


def block_roec(entropy_NTB: jax.Array, valid_NTB: jax.Array) -> jax.Array:
    """RoEC over the consecutive valid steps of each block.

    ``|H_t - H_t'|`` with ``t'`` the block's previous valid step; 0 at the block's first valid
    step (a new block averages over a new set of positions, so its first ``H`` is not a change
    of the old one) and at invalid steps.

    Args:
      entropy_NTB: ``H_t`` as ``[blocks, steps per block, B]``.
      valid_NTB: bool, which steps committed something, same shape.
    """
    s = jnp.arange(entropy_NTB.shape[1])[None, :, None]
    last = jax.lax.cummax(jnp.where(valid_NTB, s, -1), axis=1)  # last valid step <= s
    prev = jnp.concatenate([jnp.full_like(last[:, :1], -1), last[:, :-1]], axis=1)
    h_prev = jnp.take_along_axis(entropy_NTB, jnp.maximum(prev, 0), axis=1)
    return jnp.where(valid_NTB & (prev >= 0), jnp.abs(entropy_NTB - h_prev), 0.0)


class CommitRecord(NamedTuple):
    """Per generated position, written when it commits: ``[B, G]`` each."""

    step_map: jax.Array
    confidence: jax.Array
    attn_s: jax.Array
    top_ids: jax.Array
    top_probs: jax.Array


class StepRecord(NamedTuple):
    """Per step and row ``[B]``: the commit count, and ``H_t`` / ``CM_t`` when recording."""

    num_committed: jax.Array
    entropy: jax.Array | None = None
    margin: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Recorder:
    """Writes the record inside the loop; with ``record=False`` only commit counts are kept."""

    record: bool
    record_attention: bool

    def empty(self, b: int, g: int) -> CommitRecord:
        k = TOP_K if self.record else 0
        return CommitRecord(jnp.full((b, g), -1, jnp.int32), jnp.zeros((b, g), jnp.float32),
                            jnp.zeros((b, g), jnp.float32), jnp.zeros((b, g, k), jnp.int32),
                            jnp.zeros((b, g, k), jnp.float32))

    def commit(self, rec: CommitRecord, sel_BN: jax.Array, offset: jax.Array, t: jax.Array,
               p_BNV: jax.Array, x0_BN: jax.Array, s_BN: jax.Array | None) -> CommitRecord:
        """Writes step ``t``'s commits ``sel_BN`` at generated offset ``offset``."""
        if not self.record:
            return rec
        n = sel_BN.shape[1]

        def write(rec_BG, val_BN):
            old = jax.lax.dynamic_slice_in_dim(rec_BG, offset, n, axis=1)
            sel = sel_BN.reshape(sel_BN.shape + (1,) * (val_BN.ndim - 2))
            return jax.lax.dynamic_update_slice_in_dim(rec_BG, jnp.where(sel, val_BN, old),
                                                       offset, axis=1)

        step_map = write(rec.step_map, jnp.broadcast_to(t, sel_BN.shape).astype(jnp.int32))
        confidence = write(rec.confidence, token_prob(p_BNV, x0_BN))
        attn_s = rec.attn_s
        if self.record_attention:
            attn_s = write(attn_s, s_BN.astype(jnp.float32))
        top_p, top_i = top_values(p_BNV.astype(jnp.float32), TOP_K)
        return CommitRecord(step_map, confidence, attn_s, write(rec.top_ids, top_i.astype(
            jnp.int32)), write(rec.top_probs, top_p))

    def step(self, sel_BN: jax.Array, p_BNV: jax.Array, cand_BN: jax.Array) -> StepRecord:
        committed = sel_BN.sum(-1).astype(jnp.int32)
        if not self.record:
            return StepRecord(committed)
        return StepRecord(committed, *step_stats(p_BNV, cand_BN))

    def skipped(self, b: int) -> StepRecord:
        """A step that found its block complete."""
        if not self.record:
            return StepRecord(jnp.zeros((b,), jnp.int32))
        zeros = jnp.zeros((b,), jnp.float32)
        return StepRecord(jnp.zeros((b,), jnp.int32), zeros, zeros)

    def trajectory(self, rec: CommitRecord, steps_NTB: StepRecord) -> Trajectory | None:
        """The record from the final ``CommitRecord`` and the scans' ``[blocks, steps, B]``."""
        if not self.record:
            return None
        valid = steps_NTB.num_committed > 0
        h = jnp.where(valid, steps_NTB.entropy, 0.0)
        cm = jnp.where(valid, steps_NTB.margin, 0.0)

        def rows(a_NTB):
            return a_NTB.reshape(-1, a_NTB.shape[-1]).T

        return Trajectory(step_map=rec.step_map, confidence=rec.confidence, entropy=rows(h),
                          margin=rows(cm), roec=rows(block_roec(h, valid)),
                          num_committed=rows(steps_NTB.num_committed), valid=rows(valid),
                          attn_s=rec.attn_s if self.record_attention else None,
                          top_ids=rec.top_ids, top_probs=rec.top_probs)
