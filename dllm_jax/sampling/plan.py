"""``Plan``: the static description of one compiled sampler, and one step of it.

A preset (``presets.py``) resolves its knobs into a ``Plan`` once, on the host: the block
geometry, the special ids, the schedule, and the strategy objects (``strategies.py``,
``sources.py``) the loop calls. ``row_step_keys``, ``propose`` and ``select`` are one
denoising step's decisions over a plan; the compiled loop (``loop.py``), IMH (``imh.py``) and
the tests' plain Python loop all call them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.sampling.sources import Guidance, LogitsSource
from dllm_jax.sampling.strategies import PositionScorer, TokenSampler, TransferRule


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of one compiled sampler (hashable; a jit static argument).

    Attributes:
      gen_length: ``G``, generated positions.
      block_length: ``N``, positions per semi-autoregressive block.
      num_blocks: ``G / N``.
      steps_per_block: step slots per block (``steps / num_blocks``; ``block_length`` under a
        confidence threshold, where a block runs until it is complete).
      tokens: proposes a token per position.
      scorer: ranks positions.
      transfer: picks the positions that commit.
      guidance: classifier-free guidance or none.
      cache: how a block's steps get their logits.
      mask_id, eos_id, pad_id: special ids (``eos_id`` -1 when the model has none).
      counts: ``[num_blocks][steps_per_block]`` tokens to commit per step, precomputed; None
        when the transfer rule decides at run time (threshold, ``origin``).
      transfer_probs: ``origin``'s per-step commit probability ``1 - s/t``, else None.
    """

    gen_length: int
    block_length: int
    num_blocks: int
    steps_per_block: int
    tokens: TokenSampler
    scorer: PositionScorer
    transfer: TransferRule
    guidance: Guidance
    cache: LogitsSource
    mask_id: int
    eos_id: int
    pad_id: int
    counts: tuple[tuple[int, ...], ...] | None = None
    transfer_probs: tuple[float, ...] | None = None


def is_per_row(key: jax.Array) -> bool:
    """Whether ``key`` holds one raw key per row (``[B, 2]`` uint32) rather than one key."""
    return jnp.ndim(key) == 2


def row_keys_of(key: jax.Array, rows: int) -> jax.Array:
    """Every row's base key ``[B, 2]``: ``fold_in(key, b)`` for one batch key; for per-row keys
    ``fold_in(key_b, 0)``, what row 0 of a one-row call with ``key_b`` draws (so a row decodes
    as it would alone)."""
    if is_per_row(key):
        return jax.vmap(lambda k: jax.random.fold_in(k, 0))(key)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(rows))


def row_step_keys(row_keys: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Step ``t``'s keys for every row: ``fold_in(row_key, t)``, then 0 for tokens and 1 for
    positions."""
    k = jax.vmap(lambda rk: jax.random.fold_in(rk, t))(row_keys)
    return (jax.vmap(lambda kk: jax.random.fold_in(kk, 0))(k),
            jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(k))


def propose(logits_BNV: jax.Array, tok_keys: jax.Array, pos_keys: jax.Array, plan: Plan,
            s_BN: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Samples a token at every block position and scores each position.

    Returns:
      ``x0_BN`` proposed tokens (never MASK), ``conf_BN`` the rule's confidence, and ``p_BNV``
      the model's untempered distribution (for recording; inside ``jit`` it is computed only
      when the record reads it).
    """
    proposal = plan.tokens(logits_BNV, tok_keys)
    return proposal.tokens_BN, plan.scorer(proposal, pos_keys, s_BN), proposal.model_probs()


def select(conf_BN: jax.Array, cand_BN: jax.Array, count: jax.Array, pos_keys: jax.Array,
           plan: Plan, last: jax.Array, transfer_prob: jax.Array) -> jax.Array:
    """Which candidate positions commit this step (bool ``[B, N]``)."""
    return plan.transfer(conf_BN, cand_BN, pos_keys, count=count, last=last,
                         transfer_prob=transfer_prob)
