"""The swappable pieces of one denoising step, as small frozen objects chosen when a preset is
planned (see docs/sampling.md, "Structure").

A step has three decisions, each made by one object held in the ``Plan``:

- a **token sampler** proposes a token at every block position (``GumbelMax``: LLaDA's
  Gumbel-max on raw logits; ``TemperedSoftmax``: Dream's tempered, filtered softmax), with
  ``TopP`` / ``TopK`` filters only when requested;
- a **position scorer** gives each position a confidence (``position_scorer`` maps every
  remasking rule / Dream ``alg`` name to one);
- a **transfer rule** picks which masked positions commit (``TopCount``: a precomputed count;
  ``ConfidenceThreshold``: Fast-dLLM; ``CoinFlip``: Dream's ``origin``).

Noise follows one contract (docs/sampling.md, "Randomness"): tokens draw
``gumbel(token_key, [N, V])``, position rules ``uniform(position_key, [N])``, ``origin``'s coin
flips ``uniform(fold_in(position_key, 2), [N])`` and ``alg_temp`` ``gumbel(fold_in(position_key,
3), [N])``, so tests can replay the same draws through the reference implementations.

All of them are pure functions of arrays (shapes: B batch, N block length, V vocabulary), so
tests can call them without a model. A new rule is a new class here plus its name in
``position_scorer`` (or a new transfer rule chosen in ``presets.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf

# --- exact reductions without a sort -------------------------------------------------------
# XLA's argmax is a variadic (value, index) reduction that does not vectorise on a CPU, and
# ``lax.top_k`` over a vocabulary often lowers to a full sort; at a small model's shape either
# costs more than everything else around the forward pass (docs/sampling.md, "Cost"). These
# give the same results from plain max / min reductions.


def first_argmax(s_BNV: jax.Array, allowed_BNV: jax.Array | None = None) -> jax.Array:
    """``jnp.argmax`` over the last axis (the lowest index among equal maxima; NaN counts as the
    maximum, as there), restricted to ``allowed`` entries when given, as int32."""
    if allowed_BNV is not None:
        s_BNV = jnp.where(allowed_BNV, s_BNV, NEG_INF)
    m = jnp.max(s_BNV, axis=-1, keepdims=True)
    hit = (s_BNV == m) | jnp.isnan(s_BNV)
    if allowed_BNV is not None:
        hit &= allowed_BNV
    iota = jax.lax.broadcasted_iota(jnp.int32, s_BNV.shape, s_BNV.ndim - 1)
    return jnp.min(jnp.where(hit, iota, s_BNV.shape[-1]), axis=-1)


def top_values(p_BNV: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``jax.lax.top_k(p, k)`` for a small ``k``: the values ``[..., k]``, largest first (lower
    index first among equals), and their int32 indices, by ``k`` rounds of ``first_argmax``."""
    iota = jax.lax.broadcasted_iota(jnp.int32, p_BNV.shape, p_BNV.ndim - 1)
    left = jnp.ones(p_BNV.shape, jnp.bool_)
    ids = []
    for _ in range(k):
        ids.append(first_argmax(p_BNV, left))
        left &= iota != ids[-1][..., None]
    ids_BNk = jnp.stack(ids, axis=-1)
    return jnp.take_along_axis(p_BNV, ids_BNk, axis=-1), ids_BNk


def kth_largest(z_BNV: jax.Array, k: int) -> jax.Array:
    """The ``k``-th largest float32 value over the last axis (counting repeats), ``[..., 1]``:
    ``jax.lax.top_k(z, k)[0][..., -1:]`` without a sort. Bisects on an order-preserving
    unsigned key of the bits: 32 passes that each count the entries at or above a candidate."""
    bits = jax.lax.bitcast_convert_type(z_BNV.astype(jnp.float32), jnp.uint32)
    sign = jnp.uint32(0x80000000)
    key = jnp.where(bits >= sign, ~bits, bits | sign)  # increasing in the float's value

    def bit(i, best):
        trial = best | (sign >> i.astype(jnp.uint32))
        enough = jnp.sum(key >= trial, axis=-1, keepdims=True) >= k
        return jnp.where(enough, trial, best)

    best = jax.lax.fori_loop(0, 32, bit, jnp.zeros(z_BNV.shape[:-1] + (1,), jnp.uint32))
    out = jnp.where(best >= sign, best & ~sign, ~best)
    return jax.lax.bitcast_convert_type(out, jnp.float32)


def softmax_at(z_BNV: jax.Array, tokens_BN: jax.Array) -> jax.Array:
    """``jax.nn.softmax(z)[b, n, tokens[b, n]]``, computed as it is there (``exp(z - max)``
    over its sum) without the normalised array; equal to it up to the order in which XLA
    sums (at most one ulp)."""
    m = jnp.max(z_BNV, axis=-1, initial=NEG_INF, keepdims=True)
    total = jnp.sum(jnp.exp(z_BNV - m), axis=-1)
    z_tok = jnp.take_along_axis(z_BNV, tokens_BN[..., None], axis=-1)[..., 0]
    return jnp.exp(z_tok - m[..., 0]) / total


def token_prob(p_BNV: jax.Array, tokens_BN: jax.Array) -> jax.Array:
    """``p[b, n, tokens[b, n]]``."""
    return jnp.take_along_axis(p_BNV, tokens_BN[..., None], axis=-1)[..., 0]


def top2_margin(p_BNV: jax.Array) -> jax.Array:
    """Top-1 minus top-2 probability per position."""
    top2 = top_values(p_BNV, 2)[0]
    return top2[..., 0] - top2[..., 1]


def _gumbel(keys_B: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.vmap(lambda k: jax.random.gumbel(k, shape, jnp.float32))(keys_B)


def _uniform(keys_B: jax.Array, n: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.uniform(k, (n,)))(keys_B)


def _argmax_but_mask(scores_BNV: jax.Array, mask_id: int) -> jax.Array:
    """The best token per position; MASK is never proposed."""
    return first_argmax(scores_BNV, jnp.arange(scores_BNV.shape[-1]) != mask_id)


# --- token filters -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TopP:
    """Dream's ``top_p_logits``: drops the tail whose cumulative probability exceeds ``p`` (the
    first token is always kept); dropped logits become the dtype's minimum."""

    p: float

    def __call__(self, z_BNV: jax.Array) -> jax.Array:
        iota = jax.lax.broadcasted_iota(jnp.int32, z_BNV.shape, z_BNV.ndim - 1)
        neg_sorted, order = jax.lax.sort((-z_BNV, iota), dimension=z_BNV.ndim - 1,
                                         is_stable=True, num_keys=1)
        cum = jnp.cumsum(jax.nn.softmax(-neg_sorted, axis=-1), axis=-1)
        drop_sorted = cum > self.p
        drop_sorted = jnp.concatenate(
            [jnp.zeros_like(drop_sorted[..., :1]), drop_sorted[..., :-1]], axis=-1)
        # Back to vocabulary order by a scatter (the inverse permutation), not a second sort.
        drop = jnp.put_along_axis(jnp.zeros_like(drop_sorted), order, drop_sorted, axis=-1,
                                  inplace=False)
        return jnp.where(drop, jnp.finfo(z_BNV.dtype).min, z_BNV)


@dataclasses.dataclass(frozen=True)
class TopK:
    """Keeps the ``k`` largest logits; the rest become the dtype's minimum."""

    k: int

    def __call__(self, z_BNV: jax.Array) -> jax.Array:
        kth = kth_largest(z_BNV, min(self.k, z_BNV.shape[-1]))
        return jnp.where(z_BNV < kth, jnp.finfo(z_BNV.dtype).min, z_BNV)


TokenFilter = TopP | TopK


def token_filters(top_p: float | None, top_k: int | None) -> tuple[TokenFilter, ...]:
    """The filters a preset asked for, applied in this order (top-p, then top-k). ``top_p``
    None or 1 and ``top_k`` None or 0 filter nothing."""
    filters: tuple[TokenFilter, ...] = ()
    if top_p is not None and top_p < 1:
        filters += (TopP(top_p),)
    if top_k:
        filters += (TopK(top_k),)
    return filters


def _filtered(z_BNV: jax.Array, filters: tuple[TokenFilter, ...]) -> jax.Array:
    for f in filters:
        z_BNV = f(z_BNV)
    return z_BNV


# --- token samplers ------------------------------------------------------------------------


class Proposal(NamedTuple):
    """A token sampler's output. Distributions are kept as logits: each reader computes only
    what it needs (``low_confidence`` one probability per position; the record, or a rule over
    the whole distribution, the softmax), and what nothing reads is never computed.

    Attributes:
      tokens_BN: int32 proposed tokens (never MASK).
      scored_BNV: f32 logits whose softmax the position rule scores.
      model_BNV: f32 logits of the model's untempered distribution (for the record; with
        ``logits_eos_inf`` EOS has probability 0).
    """

    tokens_BN: jax.Array
    scored_BNV: jax.Array
    model_BNV: jax.Array

    def probs(self) -> jax.Array:
        """The scored distribution ``[B, N, V]``."""
        return jax.nn.softmax(self.scored_BNV, axis=-1)

    def token_probs(self) -> jax.Array:
        """The scored probability of each proposed token ``[B, N]``."""
        return softmax_at(self.scored_BNV, self.tokens_BN)

    def model_probs(self) -> jax.Array:
        """The model's untempered distribution ``[B, N, V]``."""
        return jax.nn.softmax(self.model_BNV, axis=-1)


@dataclasses.dataclass(frozen=True)
class GumbelMax:
    """LLaDA: ``argmax(filtered logits + T * gumbel)`` on the raw logits (argmax at ``T = 0``;
    the same draw as the reference's ``exp(logits) / (-log u) ** T`` with
    ``u = exp(-exp(-gumbel))``); the position rule scores the untempered softmax.

    Attributes:
      temperature: Gumbel noise scale.
      mask_id: never proposed.
      filters: top-p / top-k on the logits before the noise.
      banned_id: a token whose logit is -inf before anything else (``logits_eos_inf``).
      unscored_ids: tokens whose logits are -inf in the distribution the position rule scores,
        set after the token is drawn (``confidence_eos_eot_inf``): a position proposing one
        of them gets probability-based confidence 0, last among the candidates but still
        committed when its step's count needs it.
    """

    temperature: float
    mask_id: int
    filters: tuple[TokenFilter, ...] = ()
    banned_id: int | None = None
    unscored_ids: tuple[int, ...] = ()

    def __call__(self, logits_BNV: jax.Array, keys_B: jax.Array) -> Proposal:
        logits = logits_BNV.astype(jnp.float32)
        if self.banned_id is not None:
            logits = logits.at[..., self.banned_id].set(NEG_INF)
        z = _filtered(logits, self.filters)
        if self.temperature > 0:
            z = z + self.temperature * _gumbel(keys_B, z.shape[1:])
        scored = logits
        if self.unscored_ids:
            scored = logits.at[..., list(self.unscored_ids)].set(NEG_INF)
        return Proposal(_argmax_but_mask(z, self.mask_id), scored, logits)


@dataclasses.dataclass(frozen=True)
class TemperedSoftmax:
    """Dream: ``softmax(filters(logits / T))``, sampled (Gumbel-max) or its argmax at ``T = 0``;
    the position rule scores that tempered, filtered distribution."""

    temperature: float
    mask_id: int
    filters: tuple[TokenFilter, ...] = ()

    def __call__(self, logits_BNV: jax.Array, keys_B: jax.Array) -> Proposal:
        logits = logits_BNV.astype(jnp.float32)
        z = _filtered(logits / self.temperature if self.temperature > 0 else logits,
                      self.filters)
        if self.temperature > 0:
            tokens = _argmax_but_mask(z + _gumbel(keys_B, z.shape[1:]), self.mask_id)
        else:  # the original takes the argmax of the probabilities, not of the logits
            tokens = _argmax_but_mask(jax.nn.softmax(z, axis=-1), self.mask_id)
        return Proposal(tokens, z, logits)


TokenSampler = GumbelMax | TemperedSoftmax


# --- position scorers ----------------------------------------------------------------------
# Each maps (proposal, per-row position keys [B], attention mass S [B, N] or None) to a
# confidence [B, N]; higher commits first. ``needs_attention``: the logits source must also
# return AGDO's S (full forward only).


@dataclasses.dataclass(frozen=True)
class SampledTokenProbability:
    """``low_confidence`` / ``maskgit_plus``: the probability of the proposed token."""

    needs_attention = False

    def __call__(self, prop: Proposal, keys_B: jax.Array, s_BN: jax.Array | None) -> jax.Array:
        return prop.token_probs()


@dataclasses.dataclass(frozen=True)
class RandomOrder:
    """``random`` / ``origin``: a uniform draw per position."""

    needs_attention = False

    def __call__(self, prop: Proposal, keys_B: jax.Array, s_BN: jax.Array | None) -> jax.Array:
        return _uniform(keys_B, prop.tokens_BN.shape[1])


@dataclasses.dataclass(frozen=True)
class TopProbability:
    """``tpp``: the position's largest non-MASK probability (independent of the sample)."""

    mask_id: int
    needs_attention = False

    def __call__(self, prop: Proposal, keys_B: jax.Array, s_BN: jax.Array | None) -> jax.Array:
        p = prop.probs()
        return jnp.max(jnp.where(jnp.arange(p.shape[-1]) != self.mask_id, p, 0.0), axis=-1)


@dataclasses.dataclass(frozen=True)
class TopTwoMargin:
    """``topk_margin``: top-1 minus top-2 probability."""

    needs_attention = False

    def __call__(self, prop: Proposal, keys_B: jax.Array, s_BN: jax.Array | None) -> jax.Array:
        return top2_margin(prop.probs())


@dataclasses.dataclass(frozen=True)
class NegativeEntropy:
    """``entropy``: ``sum p log(p + 1e-10)`` (Dream's form)."""

    needs_attention = False

    def __call__(self, prop: Proposal, keys_B: jax.Array, s_BN: jax.Array | None) -> jax.Array:
        p = prop.probs()
        return jnp.sum(p * jnp.log(p + 1e-10), axis=-1)


@dataclasses.dataclass(frozen=True)
class AttentionMass:
    """``max_s`` (AGDO): last-layer attention mass to the committed tokens."""

    needs_attention = True

    def __call__(self, prop: Proposal, keys_B: jax.Array, s_BN: jax.Array | None) -> jax.Array:
        return s_BN.astype(jnp.float32)


PositionScorer = (SampledTokenProbability | RandomOrder | TopProbability | TopTwoMargin
                  | NegativeEntropy | AttentionMass)


# The one table of position-rule names (``mask_id -> scorer``): LLaDA's ``remasking`` and
# Dream's ``alg`` values (the presets validate against these keys).
LLADA_RULES: dict[str, Callable[[int], PositionScorer]] = {
    "low_confidence": lambda m: SampledTokenProbability(),
    "random": lambda m: RandomOrder(),
    "tpp": TopProbability,
    "topk_margin": lambda m: TopTwoMargin(),
    "entropy": lambda m: NegativeEntropy(),
    "max_s": lambda m: AttentionMass(),
}
DREAM_RULES: dict[str, Callable[[int], PositionScorer]] = {
    "origin": lambda m: RandomOrder(),
    "maskgit_plus": lambda m: SampledTokenProbability(),
    "topk_margin": lambda m: TopTwoMargin(),
    "entropy": lambda m: NegativeEntropy(),
}


def position_scorer(rule: str, mask_id: int) -> PositionScorer:
    """The scorer behind a remasking rule or Dream ``alg`` name."""
    return {**LLADA_RULES, **DREAM_RULES}[rule](mask_id)


# --- transfer rules ------------------------------------------------------------------------
# Each maps (confidence [B, N], candidates [B, N] = still masked, per-row position keys [B],
# this step's scheduled count, whether it is the block's last step, this step's transfer
# probability) to the positions that commit, bool [B, N]. ``may_finish_block_early``: a block
# can run out of masked positions before its last step, so steps check first.


def _ranking(conf_BN: jax.Array, cand_BN: jax.Array, keys_B: jax.Array,
             alg_temp: float) -> jax.Array:
    """Candidates' scores; ``alg_temp > 0`` perturbs them with Gumbel noise, which samples
    positions without replacement from ``softmax(conf / alg_temp)``."""
    score = jnp.where(cand_BN, conf_BN, NEG_INF)
    if alg_temp > 0:
        g = jax.vmap(lambda k: jax.random.gumbel(jax.random.fold_in(k, 3),
                                                 (conf_BN.shape[1],)))(keys_B)
        score = jnp.where(cand_BN, score / alg_temp + g, NEG_INF)
    return score


@dataclasses.dataclass(frozen=True)
class TopCount:
    """Commits the step's scheduled count of best-ranked candidates (LLaDA, Dream's
    confidence algs)."""

    alg_temp: float = 0.0
    may_finish_block_early = False

    def __call__(self, conf_BN: jax.Array, cand_BN: jax.Array, keys_B: jax.Array, *,
                 count: jax.Array, last: jax.Array, transfer_prob: jax.Array) -> jax.Array:
        order = jnp.argsort(-_ranking(conf_BN, cand_BN, keys_B, self.alg_temp), axis=-1,
                            stable=True)
        return cand_BN & (jnp.argsort(order, axis=-1) < count)


@dataclasses.dataclass(frozen=True)
class ConfidenceThreshold:
    """Fast-dLLM ``get_transfer_index`` with a threshold: the best-ranked candidate and every
    other candidate whose confidence is >= ``threshold``. At least one position commits per
    step, so a block of ``N`` positions completes within ``N`` steps (the plan gives it that
    many; steps after it completes are skipped, as Fast-dLLM's loop stops)."""

    threshold: float
    alg_temp: float = 0.0
    may_finish_block_early = True

    def __call__(self, conf_BN: jax.Array, cand_BN: jax.Array, keys_B: jax.Array, *,
                 count: jax.Array, last: jax.Array, transfer_prob: jax.Array) -> jax.Array:
        score = _ranking(conf_BN, cand_BN, keys_B, self.alg_temp)
        best = jax.nn.one_hot(jnp.argmax(score, axis=-1), conf_BN.shape[1], dtype=jnp.bool_)
        return cand_BN & ((conf_BN >= self.threshold) | best)


@dataclasses.dataclass(frozen=True)
class CoinFlip:
    """Dream ``origin``: each candidate commits with probability ``1 - s/t``; the last step
    commits what is left."""

    may_finish_block_early = True

    def __call__(self, conf_BN: jax.Array, cand_BN: jax.Array, keys_B: jax.Array, *,
                 count: jax.Array, last: jax.Array, transfer_prob: jax.Array) -> jax.Array:
        n = cand_BN.shape[1]
        u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 2), (n,)))(keys_B)
        return cand_BN & ((u < transfer_prob) | last)


TransferRule = TopCount | ConfidenceThreshold | CoinFlip
