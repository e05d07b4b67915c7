"""ATPO selectors and AGDO's order, influence and weighting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import objectives as obj
from dllm_jax.objectives.selectors import ScoreSelector

R, T, K = 6, 16, 4
RNG = np.random.default_rng(1)
H = jnp.asarray(RNG.uniform(0, 3, (R, T)))
CM = jnp.asarray(RNG.uniform(0, 1, (R, T)))
ROEC = jnp.abs(jnp.diff(H, axis=1, prepend=H[:, :1]))


@pytest.mark.parametrize("name,kw", [("uniform", {}), ("random", {}), ("entropy", {}),
                                     ("roec", {}), ("cm", {}), ("atpo", {}),
                                     ("atpo", {"rho": 0.5}), ("atpo", {"average": "group"}),
                                     ("atpo", {"average": "none"})])
def test_selectors_return_k_distinct_states_deterministically(name, kw):
    sel = obj.get_selector(name, **kw)
    key = jax.random.PRNGKey(3)
    starts, ends = jax.jit(lambda k: sel(k, H, CM, ROEC, K, group_size=3))(key)
    s2, e2 = sel(key, H, CM, ROEC, K, group_size=3)
    np.testing.assert_array_equal(np.asarray(starts), np.asarray(s2))
    starts, ends = np.asarray(starts), np.asarray(ends)
    assert starts.shape == (R, K) and ends.shape == (R, K)
    for row_s, row_e in zip(starts, ends, strict=True):
        assert len(set(row_s.tolist())) == K
        assert (row_s >= 0).all() and (row_e <= T).all() and (row_e > row_s).all()
    if name == "uniform":  # TraceRL grouping covers every step exactly once
        assert starts[0].tolist() == [0, 4, 8, 12] and ends[0].tolist() == [4, 8, 12, 16]


def test_atpo_rule_definitions():
    key = jax.random.PRNGKey(0)
    hyb = ScoreSelector(kind="atpo", lam=1.0)(key, H, CM, ROEC, K)
    roec = obj.get_selector("roec")(key, H, CM, ROEC, K)
    np.testing.assert_array_equal(np.asarray(hyb[0]), np.asarray(roec[0]))
    cm_only = ScoreSelector(kind="atpo", lam=0.0)(key, H, CM, ROEC, K)
    np.testing.assert_array_equal(np.asarray(cm_only[0]),
                                  np.asarray(obj.get_selector("cm")(key, H, CM, ROEC, K)[0]))
    # Hand check of the batch-averaged hybrid score: z within rows, mean over rows, top-K.
    def z(x):
        x = np.asarray(x)
        return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    score = (0.5 * z(ROEC) + 0.5 * z(1 - np.asarray(CM))).mean(0)
    expect = np.sort(np.argsort(-score, kind="stable")[:K])
    got = np.asarray(obj.get_selector("atpo")(key, H, CM, ROEC, K)[0])
    assert (got == expect).all()
    # rho: the top ceil(rho K) by score are always included.
    mixed = np.asarray(obj.get_selector("atpo", rho=0.5)(key, H, CM, ROEC, K)[0])
    top2 = set(np.argsort(-score, kind="stable")[:2].tolist())
    assert all(top2 <= set(row.tolist()) for row in mixed)
    with pytest.raises(ValueError, match="unknown selector"):
        obj.get_selector("best")


def _naive_order(attn, prompt, resp, n):
    b, l, _ = attn.shape
    out = np.full((b, l), -1)
    for r in range(b):
        u = prompt[r].astype(bool).copy()
        step = 0
        while (resp[r].astype(bool) & (out[r] < 0)).any():
            s = attn[r] @ u.astype(float)
            cand = [i for i in range(l) if resp[r, i] and out[r, i] < 0]
            cand.sort(key=lambda i: (-s[i], i))
            for i in cand[:n]:
                out[r, i] = step
                u[i] = True
            step += 1
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_attention_order_matches_greedy_loop(n):
    b, l = 3, 9
    logits = RNG.normal(size=(b, l, l)) * 2
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    prompt = np.zeros((b, l), int)
    prompt[:, :3] = 1
    resp = 1 - prompt
    resp[2, -1] = 0  # a padded position is never ordered
    order = np.asarray(obj.attention_order(jnp.asarray(attn), prompt, resp, n))
    np.testing.assert_array_equal(order, _naive_order(attn, prompt, resp, n))
    for r in range(b):  # every response token exactly once, n per step
        steps = order[r][resp[r] > 0]
        assert (steps >= 0).all() and np.bincount(steps).max() <= n
        assert (order[r][resp[r] == 0] == -1).all()


def test_influence_and_agdo_weighting():
    attn = jnp.asarray(RNG.dirichlet(np.ones(5), size=(2, 5)))
    inf = np.asarray(obj.influence(attn))
    np.testing.assert_allclose(inf, np.asarray(attn).mean(1), rtol=1e-6)
    np.testing.assert_allclose(inf.sum(-1), 1.0, rtol=1e-6)
    logp = jnp.asarray(-RNG.uniform(0.1, 2, (4, 5)))
    tgt = jnp.asarray(RNG.uniform(size=(4, 5)) < 0.6)
    infl = jnp.asarray(RNG.uniform(0, 0.3, (4, 5)))
    base = -(logp * tgt).sum(-1) / jnp.maximum(tgt.sum(-1), 1)
    has = tgt.sum(-1) > 0
    l0, _ = obj.agdo_sft_loss(logp, tgt, infl, gamma=0.0)
    np.testing.assert_allclose(float(l0), float(base[has].mean()), rtol=1e-6)
    l1, _ = obj.agdo_sft_loss(logp, tgt, infl, gamma=10.0)
    w = 1 + 10 * np.asarray(infl)
    lp_np, tg_np = np.asarray(logp), np.asarray(tgt)
    naive = np.mean([-(w[s] * lp_np[s] * tg_np[s]).sum() / tg_np[s].sum()
                     for s in range(4) if np.asarray(tgt)[s].any()])
    np.testing.assert_allclose(float(l1), naive, rtol=1e-6)
    adv = jnp.asarray([1.5, -0.5, 0.0, 2.0])
    a2 = np.asarray(obj.agdo_advantages(adv, infl, delta=4.0))
    np.testing.assert_allclose(a2, np.asarray(adv)[:, None] + np.sign(adv)[:, None] * 4.0
                               * np.asarray(infl), rtol=1e-6)
    # delta = 0: AGDO-RL equals the plain trajectory loss.
    old = logp + 0.1
    ra, _ = obj.agdo_rl_loss(logp, old, None, adv, infl, tgt, 2, delta=0.0)
    rb, _ = obj.tracerl_loss(logp, old, None, adv, tgt, 2, eps=0.2, beta=0.0)
    np.testing.assert_allclose(float(ra), float(rb), rtol=1e-6)
