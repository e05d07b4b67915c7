"""IMH global tempering on a toy model whose per-position distributions are known exactly."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dllm_jax.sampling import IMHConfig, LLaDAConfig, generate
from helpers import tiny_config

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
