"""IMH global tempering on toy models whose distributions are known exactly: a context-free
one (every order gives a sequence the same probability) and an order-dependent one, where the
chain's target on (sequence, order) pairs and its sequence marginal are enumerated."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tiny_config

from dllm_jax.sampling import IMHConfig, LLaDAConfig, generate

V, MASK, P, G = 8, 7, 2, 2


class ToyModel(nnx.Module):
    """Context-free logits: generated position i has the fixed distribution ``table[i]``, so a
    completion's probability is the product of its tokens' probabilities in any order."""

    def __init__(self, table_GV):
        self.config = tiny_config(vocab_size=V, mask_token_id=MASK, eos_token_id=None,
                                  pad_token_id=0)
        self.table = nnx.Param(jnp.asarray(table_GV, jnp.float32))

    def __call__(self, tokens_BL, attention_mask=None, *, window=None, **_):
        b = tokens_BL.shape[0]
        full = jnp.concatenate([jnp.zeros((P, V)), self.table[...]], 0)  # prompt rows unused
        logits = jax.lax.dynamic_slice_in_dim(full, window[0], window[1], 0)
        return jnp.broadcast_to(logits[None], (b,) + logits.shape)


PROBS = np.array([[0.5, 0.3, 0.15, 0.05, 0, 0, 0, 0],
                  [0.05, 0.6, 0.2, 0.15, 0, 0, 0, 0]])


@pytest.fixture(scope="module")
def toy():
    return ToyModel(np.log(np.maximum(PROBS, 1e-30)))


def _empirical(seqs):
    counts = np.zeros((4, 4))
    for a, b in seqs[:, P:]:
        counts[a, b] += 1
    return counts / counts.sum()


def _tempered(alpha):
    joint = np.outer(PROBS[0, :4], PROBS[1, :4]) ** alpha
    return joint / joint.sum()


def _tv(p, q):
    return 0.5 * np.abs(p - q).sum()


ROWS = 4000
PROMPTS = np.ones((ROWS, P), np.int32)


def test_alpha_one_accepts_everything_and_reproduces_the_proposal(toy):
    cfg = IMHConfig(alpha=1.0, num_candidates=4, gen_length=G, block_length=G, steps=2)
    out = generate(toy, PROMPTS, config=cfg, key=0, record=True)
    np.testing.assert_array_equal(np.asarray(out.trajectory.acceptance), 1.0)
    # Random-order proposal at temperature 1 samples p exactly; 4000 rows: TV noise ~ 0.02.
    assert _tv(_empirical(np.asarray(out.sequences)), _tempered(1.0)) < 0.04


def test_large_alpha_returns_the_best_candidate(toy):
    from dllm_jax.sampling.imh import chain

    lp = jnp.asarray([[-3.0, -1.0, -2.0, -0.5, -4.0], [-1.0, -2.0, -3.0, -4.0, -5.0]])
    u = jax.random.uniform(jax.random.PRNGKey(0), lp.shape)
    choice, _ = chain(lp, lp, u, alpha=1e6)
    np.testing.assert_array_equal(np.asarray(choice), [3, 0])
    cfg = IMHConfig(alpha=1e4, num_candidates=16, gen_length=G, block_length=G, steps=2)
    seqs = np.asarray(generate(toy, PROMPTS[:500], config=cfg, key=1).sequences)
    # With 16 candidates the mode (0, 1) (p = 0.30) is almost always among them.
    assert (seqs[:, P:] == [0, 1]).all(1).mean() > 0.99


@pytest.mark.parametrize("alpha", [2.0, 4.0])
def test_imh_approaches_tempered_distribution(toy, alpha):
    cfg = IMHConfig(alpha=alpha, num_candidates=32, gen_length=G, block_length=G, steps=2)
    emp = _empirical(np.asarray(generate(toy, PROMPTS, config=cfg, key=2).sequences))
    # Stated bound: TV <= 0.05 to p^alpha (sampling noise ~0.02 plus finite-K bias), while the
    # untempered p is far (TV > 0.15): the chain really tempers.
    assert _tv(emp, _tempered(alpha)) < 0.05
    assert _tv(emp, _tempered(1.0)) > 0.15


def test_low_confidence_has_lower_output_entropy_than_random(toy):
    def entropy(remasking):
        cfg = LLaDAConfig(steps=2, gen_length=G, block_length=G, temperature=1.0,
                          remasking=remasking)
        emp = _empirical(np.asarray(generate(toy, PROMPTS, config=cfg, key=3).sequences))
        nz = emp[emp > 0]
        return -(nz * np.log(nz)).sum()

    h_low, h_rand = entropy("low_confidence"), entropy("random")
    h_true = -(lambda q: (q[q > 0] * np.log(q[q > 0])).sum())(_tempered(1.0))
    assert abs(h_rand - h_true) < 0.05  # random order samples p itself
    assert h_low < h_rand - 0.05


def test_imh_on_a_real_model_runs_blockwise(sharp_llada):
    model = sharp_llada
    cfg = IMHConfig(alpha=4.0, num_candidates=3, gen_length=8, block_length=4, steps=4)
    out = generate(model, [[3, 4, 5]], config=cfg, key=0, record=True)
    assert out.sequences.shape == (1, 11) and not (np.asarray(out.sequences) == 63).any()
    acc = np.asarray(out.trajectory.acceptance)
    assert acc.shape == (1, 2) and ((acc >= 0) & (acc <= 1)).all()
    assert list(itertools.chain(np.asarray(out.sequences)[0, :3])) == [3, 4, 5]


# --- an order-dependent toy: two generated positions, three tokens, MASK = 3 -----------------
PAIR_TOKENS, PAIR_MASK = 3, 3
PAIR_BASE = np.array([[-0.5, -0.3, 1.9], [1.9, -1.4, -0.6]])  # position i, the other masked
PAIR_COND = np.array([[[-2.1, 0.3, 0.0], [0.3, -1.5, 3.8], [1.2, 1.7, 1.7]],  # [i, other's token]
                      [[1.1, 0.8, 0.2], [0.9, 3.7, -2.9], [0.6, 0.7, -0.4]]])
PAIR_SEQS = list(itertools.product(range(PAIR_TOKENS), repeat=2))
PAIR_ROWS = 8000


class PairModel(nnx.Module):
    """Generated position i has logits ``PAIR_BASE[i]`` while the other position is masked and
    ``PAIR_COND[i, t]`` once it holds token t: decoding 0 then 1 and 1 then 0 give a sequence
    different probabilities, and no joint distribution has both as its conditionals."""

    def __init__(self):
        self.config = tiny_config(vocab_size=PAIR_TOKENS + 1, mask_token_id=PAIR_MASK,
                                  eos_token_id=None, pad_token_id=0)
        self.base = nnx.Param(jnp.asarray(PAIR_BASE, jnp.float32))
        self.cond = nnx.Param(jnp.asarray(PAIR_COND, jnp.float32))

    def __call__(self, tokens_BL, attention_mask=None, *, window=None, **_):
        b = tokens_BL.shape[0]
        other = tokens_BL[:, P:P + 2][:, ::-1]  # the token at the other generated position
        held = other != PAIR_MASK
        cond = self.cond[...][jnp.arange(2), jnp.where(held, other, 0)]  # [B, 2, tokens]
        gen = jnp.where(held[..., None], cond, self.base[...][None])
        gen = jnp.concatenate([gen, jnp.full((b, 2, 1), -1e9)], -1)  # MASK is never predicted
        full = jnp.concatenate([jnp.zeros((b, P, PAIR_TOKENS + 1)), gen], 1)
        return jax.lax.dynamic_slice_in_dim(full, window[0], window[1], 1)


@pytest.fixture(scope="module")
def pair_model():
    return PairModel()


def _softmax(z):
    e = np.exp(z - np.max(z))
    return e / e.sum()


def _normed(v):
    v = np.asarray(v, np.float64)
    return v / v.sum()


def _pair_path_prob(x, order, temperature=1.0):
    """p(x | order) at ``temperature``: the first position from its logits with the other
    masked, the second given the first's token."""
    a, b = order
    return (_softmax(PAIR_BASE[a] / temperature)[x[a]]
            * _softmax(PAIR_COND[b, x[a]] / temperature)[x[b]])


def _order_law(proposal):
    """The proposal's law of orders with one position per step. ``random`` takes either order
    with probability 1/2. ``tpp`` commits first the position with the larger top probability
    on the empty canvas (the second is then the only one left)."""
    if proposal == "random":
        return {(0, 1): 0.5, (1, 0): 0.5}
    first = int(np.argmax([_softmax(PAIR_BASE[i]).max() for i in range(2)]))
    return {(first, 1 - first): 1.0}


def _chain_output(law, score, alpha, temperature, k):
    """The exact law of the sequence a K-candidate chain returns: independent MH over
    (sequence, order) states with proposal ``law(order) p_T(x | order)`` and weight
    ``score(x, order)^alpha / p_T(x | order)``, started at a proposal draw, K - 1 moves."""
    states = [(x, o) for x in PAIR_SEQS for o in law]
    q = np.array([law[o] * _pair_path_prob(x, o, temperature) for x, o in states])
    w = np.array([score(x, o) ** alpha / _pair_path_prob(x, o, temperature) for x, o in states])
    kernel = q[None, :] * np.minimum(1.0, w[None, :] / w[:, None])
    np.fill_diagonal(kernel, 0.0)
    kernel += np.diag(1.0 - kernel.sum(1))
    dist = q @ np.linalg.matrix_power(kernel, k - 1)
    return np.array([sum(d for (x, _), d in zip(states, dist, strict=True) if x == s)
                     for s in PAIR_SEQS])


def _pair_empirical(seqs):
    gen = [tuple(int(t) for t in row) for row in seqs[:, P:]]
    return np.array([gen.count(s) for s in PAIR_SEQS], np.float64) / len(gen)


@pytest.mark.parametrize("proposal,target,alpha,far", [
    ("random", "path", 3.0, ("p^alpha", "p", "proposal", "other target")),
    ("random", "canonical", 3.0, ("p^alpha", "p", "proposal", "other target")),
    ("tpp", "path", 3.0, ("p", "proposal", "other target")),  # one order: p^alpha is the target
    ("random", "path", 1.0, ("proposal", "other target")),  # targets p: lq must undo the tempering
])
def test_imh_samples_its_stated_target_on_an_order_dependent_model(pair_model, proposal,
                                                                   target, alpha, far):
    """Per block the chain targets ``sum_order rho(order) p(x | order)^alpha`` (``path``) or
    ``p(x | left to right)^alpha`` (``canonical``), not ``p^alpha``. The proposal runs at
    temperature 2.5, so its ``lq`` differs from ``lp``."""
    temperature, k = 2.5, 32
    law = _order_law(proposal)
    left_to_right = lambda x, o: _pair_path_prob(x, (0, 1))  # noqa: E731
    score = left_to_right if target == "canonical" else _pair_path_prob

    def order_mix(f, power=1.0):
        return _normed([sum(r * f(x, o) ** power for o, r in law.items()) for x in PAIR_SEQS])

    exact = order_mix(score, alpha)
    p = order_mix(_pair_path_prob)  # what the proposal's order rule samples at temperature 1
    others = {"p^alpha": _normed(p ** alpha), "p": p,
              "proposal": order_mix(lambda x, o: _pair_path_prob(x, o, temperature)),
              "other target": order_mix(_pair_path_prob if target == "canonical"
                                        else left_to_right, alpha)}
    for name in far:  # the toy separates them: each is at TV > 0.2 from the target
        assert _tv(others[name], exact) > 0.2, name
    # The 32-candidate chain's bias on this toy, by enumeration: below 0.002 in TV.
    assert _tv(_chain_output(law, score, alpha, temperature, k), exact) < 0.002
    cfg = IMHConfig(alpha=alpha, num_candidates=k, proposal=proposal,
                    proposal_temperature=temperature, target=target, gen_length=2,
                    block_length=2, steps=2)
    seqs = np.asarray(generate(pair_model, np.ones((PAIR_ROWS, P), np.int32), config=cfg,
                               key=4).sequences)
    emp = _pair_empirical(seqs)
    # Tolerance: over 9 outcomes E[TV] <= sqrt(9 / N) / 2 = 0.017 for N = 8000 rows, and TV
    # exceeds its mean by 0.02 with probability <= exp(-2 N 0.02^2) < 0.002 (one row moves TV
    # by at most 1/N); plus the chain's bias.
    assert _tv(emp, exact) < 0.04
    for name in far:
        assert _tv(emp, others[name]) > 0.15, name
