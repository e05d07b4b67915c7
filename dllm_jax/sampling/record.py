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

from dllm_jax.sampling.strategies import token_prob, top2_margin


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
    """

    step_map: jax.Array
    confidence: jax.Array
    entropy: jax.Array
    margin: jax.Array
    roec: jax.Array
    num_committed: jax.Array
    attn_s: jax.Array | None = None


class IMHRecord(NamedTuple):
    """IMH's record: ``acceptance`` f32 ``[B, num_blocks]`` (accepted moves / (K - 1) per
    block) and ``log_prob`` f32 ``[B]`` (the model's log-probability of the returned
    completion along the chosen candidates' paths)."""

    acceptance: jax.Array
    log_prob: jax.Array


class GenerateOutput(NamedTuple):
    """``sequences`` int32 ``[B, P + G]`` (prompt as given, then the completion, with tokens
    after the first EOS replaced by padding) and the optional ``trajectory``."""

    sequences: jax.Array
    trajectory: Trajectory | IMHRecord | None = None


def strip_after_eos(seqs_BL: jax.Array, p_len: int, eos_id: int, pad_id: int) -> jax.Array:
    """Generated tokens after the first EOS become padding (the EOS itself is kept)."""
    if eos_id < 0:
        return seqs_BL
    gen = seqs_BL[:, p_len:]
    is_eos = (gen == eos_id).astype(jnp.int32)
    after = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
    return seqs_BL.at[:, p_len:].set(jnp.where(after, pad_id, gen))


def step_stats(p_BNV: jax.Array, cand_BN: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean entropy and mean top-1/top-2 margin over the candidate positions."""
    ent = -jnp.sum(jnp.where(p_BNV > 0, p_BNV * jnp.log(jnp.where(p_BNV > 0, p_BNV, 1.0)), 0.0),
                   axis=-1)
    marg = top2_margin(p_BNV)
    w = cand_BN.astype(jnp.float32)
    denom = jnp.maximum(w.sum(-1), 1.0)
    return (ent * w).sum(-1) / denom, (marg * w).sum(-1) / denom


class CommitRecord(NamedTuple):
    """Per generated position, written when it commits: ``[B, G]`` each."""

    step_map: jax.Array
    confidence: jax.Array
    attn_s: jax.Array


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
        return CommitRecord(jnp.full((b, g), -1, jnp.int32), jnp.zeros((b, g), jnp.float32),
                            jnp.zeros((b, g), jnp.float32))

    def commit(self, rec: CommitRecord, sel_BN: jax.Array, offset: jax.Array, t: jax.Array,
               p_BNV: jax.Array, x0_BN: jax.Array, s_BN: jax.Array | None) -> CommitRecord:
        """Writes step ``t``'s commits ``sel_BN`` at generated offset ``offset``."""
        if not self.record:
            return rec
        n = sel_BN.shape[1]

        def write(rec_BG, val_BN):
            old = jax.lax.dynamic_slice_in_dim(rec_BG, offset, n, axis=1)
            return jax.lax.dynamic_update_slice_in_dim(rec_BG, jnp.where(sel_BN, val_BN, old),
                                                       offset, axis=1)

        step_map = write(rec.step_map, jnp.broadcast_to(t, sel_BN.shape).astype(jnp.int32))
        confidence = write(rec.confidence, token_prob(p_BNV, x0_BN))
        attn_s = rec.attn_s
        if self.record_attention:
            attn_s = write(attn_s, s_BN.astype(jnp.float32))
        return CommitRecord(step_map, confidence, attn_s)

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
        steps = jax.tree.map(lambda a: a.reshape(-1, a.shape[-1]).T, steps_NTB)
        h = steps.entropy
        roec = jnp.concatenate([jnp.zeros((h.shape[0], 1)), jnp.abs(h[:, 1:] - h[:, :-1])], axis=1)
        return Trajectory(step_map=rec.step_map, confidence=rec.confidence, entropy=h,
                          margin=steps.margin, roec=roec, num_committed=steps.num_committed,
                          attn_s=rec.attn_s if self.record_attention else None)
