"""AGDO: the greedy attention order against a Python loop, influence, SFT/RL weighting."""

import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import objectives as obj

RNG = np.random.default_rng(2)

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
