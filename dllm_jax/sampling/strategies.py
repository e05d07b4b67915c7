"""The swappable pieces of one denoising step, as small frozen objects chosen when a preset is
planned (see docs/sampling.md, "Structure").

A step has three decisions, each made by one object held in the ``Plan``:

- a **token sampler** proposes a token at every block position (``GumbelMax``: LLaDA's
  Gumbel-max on raw logits; ``TemperedSoftmax``: Dream's tempered, filtered softmax), with
  ``TopP`` / ``TopK`` filters only when requested;
- a **position scorer** gives each position a confidence (``position_scorer`` maps every
  remasking rule / Dream ``alg`` name to one; ``NoSpecialTokens`` is the EOS/EOT rule);
- a **transfer rule** picks which masked positions commit (``TopCount``: a precomputed count;
  ``ConfidenceThreshold``: Fast-dLLM; ``CoinFlip``: Dream's ``origin``).

All of them are pure functions of arrays (shapes: B batch, N block length, V vocabulary), so
tests can call them without a model. A new rule is a new class here plus its name in
``position_scorer`` (or a new transfer rule chosen in ``presets.py``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def token_prob(p_BNV: jax.Array, tokens_BN: jax.Array) -> jax.Array:
    """``p[b, n, tokens[b, n]]``."""
    return jnp.take_along_axis(p_BNV, tokens_BN[..., None], axis=-1)[..., 0]


def top2_margin(p_BNV: jax.Array) -> jax.Array:
    """Top-1 minus top-2 probability per position."""
    top2 = jax.lax.top_k(p_BNV, 2)[0]
    return top2[..., 0] - top2[..., 1]


def _gumbel(keys_B: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.vmap(lambda k: jax.random.gumbel(k, shape, jnp.float32))(keys_B)


def _uniform(keys_B: jax.Array, n: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.uniform(k, (n,)))(keys_B)


def _argmax_but_mask(scores_BNV: jax.Array, mask_id: int) -> jax.Array:
    """The best token per position; MASK is never proposed."""
    not_mask = jnp.arange(scores_BNV.shape[-1]) != mask_id
    return jnp.argmax(jnp.where(not_mask, scores_BNV, NEG_INF), axis=-1).astype(jnp.int32)


# --- token filters -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TopP:
    """Dream's ``top_p_logits``: drops the tail whose cumulative probability exceeds ``p`` (the
    first token is always kept); dropped logits become the dtype's minimum."""

    p: float

    def __call__(self, z_BNV: jax.Array) -> jax.Array:
        order = jnp.argsort(-z_BNV, axis=-1)
        sorted_z = jnp.take_along_axis(z_BNV, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_z, axis=-1), axis=-1)
        drop_sorted = cum > self.p
        drop_sorted = jnp.concatenate(
            [jnp.zeros_like(drop_sorted[..., :1]), drop_sorted[..., :-1]], axis=-1)
        drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), axis=-1)
        return jnp.where(drop, jnp.finfo(z_BNV.dtype).min, z_BNV)


@dataclasses.dataclass(frozen=True)
class TopK:
    """Keeps the ``k`` largest logits; the rest become the dtype's minimum."""

    k: int

    def __call__(self, z_BNV: jax.Array) -> jax.Array:
        kth = jax.lax.top_k(z_BNV, min(self.k, z_BNV.shape[-1]))[0][..., -1:]
        return jnp.where(z_BNV < kth, jnp.finfo(z_BNV.dtype).min, z_BNV)


TokenFilter = TopP | TopK


def token_filters(top_p: float | None, top_k: int | None) -> tuple[TokenFilter, ...]:
    """The filters a preset asked for, applied in this order (top-p, then top-k)."""
    filters: tuple[TokenFilter, ...] = ()
    if top_p is not None and top_p < 1:
        filters += (TopP(top_p),)
    if top_k is not None:
        filters += (TopK(top_k),)
    return filters


def _filtered(z_BNV: jax.Array, filters: tuple[TokenFilter, ...]) -> jax.Array:
    for f in filters:
        z_BNV = f(z_BNV)
    return z_BNV


# --- token samplers ------------------------------------------------------------------------


class Proposal(NamedTuple):
    """A token sampler's output.

    Attributes:
      tokens_BN: int32 proposed tokens (never MASK).
      probs_BNV: the distribution the position rule scores.
      model_probs_BNV: the model's untempered distribution (for the record).
    """

    tokens_BN: jax.Array
    probs_BNV: jax.Array
    model_probs_BNV: jax.Array


@dataclasses.dataclass(frozen=True)
class GumbelMax:
    """LLaDA: ``argmax(filtered logits + T * gumbel)`` on the raw logits (argmax at ``T = 0``);
    the position rule scores the untempered softmax.

    Attributes:
      temperature: Gumbel noise scale.
      mask_id: never proposed.
      filters: top-p / top-k on the logits before the noise.
      banned_id: a token whose logit is -inf before anything else (``logits_eos_inf``).
    """

    temperature: float
    mask_id: int
    filters: tuple[TokenFilter, ...] = ()
    banned_id: int | None = None

    def __call__(self, logits_BNV: jax.Array, keys_B: jax.Array) -> Proposal:
        logits = logits_BNV.astype(jnp.float32)
        if self.banned_id is not None:
            logits = logits.at[..., self.banned_id].set(NEG_INF)
        p = jax.nn.softmax(logits, axis=-1)
        z = _filtered(logits, self.filters)
        if self.temperature > 0:
            z = z + self.temperature * _gumbel(keys_B, z.shape[1:])
        return Proposal(_argmax_but_mask(z, self.mask_id), p, p)


@dataclasses.dataclass(frozen=True)
class TemperedSoftmax:
    """Dream: ``softmax(filters(logits / T))``, sampled (Gumbel-max) or its argmax at ``T = 0``;
    the position rule scores that tempered, filtered distribution."""

    temperature: float
    mask_id: int
    filters: tuple[TokenFilter, ...] = ()

    def __call__(self, logits_BNV: jax.Array, keys_B: jax.Array) -> Proposal:
        logits = logits_BNV.astype(jnp.float32)
        p = jax.nn.softmax(logits, axis=-1)
        z = _filtered(logits / self.temperature if self.temperature > 0 else logits,
                      self.filters)
        probs = jax.nn.softmax(z, axis=-1)
        scores = z + _gumbel(keys_B, z.shape[1:]) if self.temperature > 0 else probs
        return Proposal(_argmax_but_mask(scores, self.mask_id), probs, p)


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
        return token_prob(prop.probs_BNV, prop.tokens_BN)


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
        not_mask = jnp.arange(prop.probs_BNV.shape[-1]) != self.mask_id
        return jnp.max(jnp.where(not_mask, prop.probs_BNV, 0.0), axis=-1)


@dataclasses.dataclass(frozen=True)
class TopTwoMargin:
    """``topk_margin``: top-1 minus top-2 probability."""

    needs_attention = False

    def __call__(self, prop: Proposal, keys_B: jax.Array, s_BN: jax.Array | None) -> jax.Array:
        return top2_margin(prop.probs_BNV)


@dataclasses.dataclass(frozen=True)
class NegativeEntropy:
    """``entropy``: ``sum p log(p + 1e-10)`` (Dream's form)."""

    needs_attention = False

    def __call__(self, prop: Proposal, keys_B: jax.Array, s_BN: jax.Array | None) -> jax.Array:
        p = prop.probs_BNV
        return jnp.sum(p * jnp.log(p + 1e-10), axis=-1)


@dataclasses.dataclass(frozen=True)
class AttentionMass:
    """``max_s`` (AGDO): last-layer attention mass to the committed tokens."""

    needs_attention = True

    def __call__(self, prop: Proposal, keys_B: jax.Array, s_BN: jax.Array | None) -> jax.Array:
        return s_BN.astype(jnp.float32)


BaseScorer = (SampledTokenProbability | RandomOrder | TopProbability | TopTwoMargin
              | NegativeEntropy | AttentionMass)


@dataclasses.dataclass(frozen=True)
class NoSpecialTokens:
    """``confidence_eos_eot_inf``: positions whose proposal is EOS or EOT get confidence -inf
    (an id of -1 matches nothing)."""

    inner: BaseScorer
    eos_id: int
    eot_id: int

    @property
    def needs_attention(self) -> bool:
        return self.inner.needs_attention

    def __call__(self, prop: Proposal, keys_B: jax.Array, s_BN: jax.Array | None) -> jax.Array:
        conf = self.inner(prop, keys_B, s_BN)
        special = (prop.tokens_BN == self.eos_id) | (prop.tokens_BN == self.eot_id)
        return jnp.where(special, NEG_INF, conf)


PositionScorer = BaseScorer | NoSpecialTokens


def position_scorer(rule: str, mask_id: int) -> BaseScorer:
    """The scorer behind a remasking rule or Dream ``alg`` name (the one table of names)."""
    return {
        "low_confidence": SampledTokenProbability(),
        "maskgit_plus": SampledTokenProbability(),
        "random": RandomOrder(),
        "origin": RandomOrder(),
        "tpp": TopProbability(mask_id),
        "topk_margin": TopTwoMargin(),
        "entropy": NegativeEntropy(),
        "max_s": AttentionMass(),
    }[rule]


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
    """Fast-dLLM: every candidate with confidence >= ``threshold``, at least the best one; the
    block's last step commits what is left."""

    threshold: float
    alg_temp: float = 0.0
    may_finish_block_early = True

    def __call__(self, conf_BN: jax.Array, cand_BN: jax.Array, keys_B: jax.Array, *,
                 count: jax.Array, last: jax.Array, transfer_prob: jax.Array) -> jax.Array:
        score = _ranking(conf_BN, cand_BN, keys_B, self.alg_temp)
        best = jax.nn.one_hot(jnp.argmax(score, axis=-1), conf_BN.shape[1], dtype=jnp.bool_)
        sel = cand_BN & ((conf_BN >= self.threshold) | best)
        return jnp.where(last, cand_BN, sel)


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
