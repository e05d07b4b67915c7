"""AGDO: the greedy attention order against a Python loop, influence, SFT/RL weighting."""

import jax
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
    for r in range(b):  # every response token exactly once, n per step (the last may be short)
        steps = order[r][resp[r] > 0]
        counts = np.bincount(steps)
        assert (steps >= 0).all() and counts.sum() == resp[r].sum()
        assert (counts[:-1] == n).all() and 1 <= counts[-1] <= n
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


def _naive_trajectory(logp, old, adv_tok, mask, eps, num_rollouts):
    total = 0.0
    for s in range(logp.shape[0]):
        vals = []
        for i in range(logp.shape[1]):
            if mask[s, i]:
                rho = np.exp(logp[s, i] - old[s, i])
                a = adv_tok[s, i]
                vals.append(-min(rho * a, np.clip(rho, 1 - eps, 1 + eps) * a))
        total += np.mean(vals) if vals else 0.0
    return total / num_rollouts


def _naive_agdo_sft(logp, tgt, infl, gamma):
    per_state = [-((1 + gamma * infl[s]) * logp[s] * tgt[s]).sum() / tgt[s].sum()
                 for s in range(logp.shape[0]) if tgt[s].any()]
    return np.mean(per_state)


def test_agdo_losses_match_loops_and_their_gradients():
    with jax.enable_x64(True):
        s_, l_ = 5, 6
        logp = -RNG.uniform(0.1, 2, (s_, l_))
        old = logp + RNG.normal(0, 0.3, (s_, l_))
        tgt = (RNG.uniform(size=(s_, l_)) < 0.5).astype(np.float64)
        tgt[0] = 0  # a state without targets contributes nothing
        tgt[1, 0] = 1
        infl = RNG.uniform(0, 0.3, (s_, l_))
        adv = np.array([0.8, -1.2, 0.0, 2.0, -0.3])
        f = lambda x: obj.agdo_sft_loss(x, tgt, infl, gamma=7.0)[0]  # noqa: E731
        np.testing.assert_allclose(float(f(logp)), _naive_agdo_sft(logp, tgt, infl, 7.0),
                                   rtol=1e-10)
        # d/dlogp of the loss: -(1 + gamma I) * tgt / n_s / (states with targets).
        has = tgt.sum(1) > 0
        want = -(1 + 7.0 * infl) * tgt / np.maximum(tgt.sum(1, keepdims=True), 1) / has.sum()
        np.testing.assert_allclose(np.asarray(jax.grad(f)(jnp.asarray(logp))), want, atol=1e-12)
        adv_tok = adv[:, None] + np.sign(adv)[:, None] * 4.0 * infl
        g = lambda x: obj.agdo_rl_loss(x, old, None, adv, infl, tgt, 2, delta=4.0)[0]  # noqa: E731
        np.testing.assert_allclose(float(g(logp)),
                                   _naive_trajectory(logp, old, adv_tok, tgt, 0.2, 2), rtol=1e-10)
        grad = np.asarray(jax.grad(g)(jnp.asarray(logp)))
        h = 1e-6
        for ij in [(1, 0), (3, 2), (4, 5)]:
            if not tgt[ij]:
                continue
            xp, xm = logp.copy(), logp.copy()
            xp[ij] += h
            xm[ij] -= h
            fd = (_naive_trajectory(xp, old, adv_tok, tgt, 0.2, 2)
                  - _naive_trajectory(xm, old, adv_tok, tgt, 0.2, 2)) / (2 * h)
            assert abs(grad[ij] - fd) < 1e-6, (ij, grad[ij], fd)
        assert (grad[2] == 0).all()  # zero advantage stays zero: sign(0) = 0


def test_order_states_mask_exactly_later_steps():
    order = jnp.asarray([[2, 0, 1, 1, 0, -1]])
    masked, tgt = obj.order_states(order, num_steps=3)
    np.testing.assert_array_equal(np.asarray(masked[0]), [[1, 1, 1, 1, 1, 0],
                                                          [1, 0, 1, 1, 0, 0],
                                                          [1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(tgt[0]), [[0, 1, 0, 0, 1, 0],
                                                       [0, 0, 1, 1, 0, 0],
                                                       [1, 0, 0, 0, 0, 0]])


def test_order_from_the_model_attention(tiny_dream):
    """End to end on a tiny model: the order from its ``attn_mean`` (jitted) equals the loop,
    and :func:`influence` equals the model's in-kernel ``I``."""
    from flax import nnx

    p, g = 3, 6
    seq = jnp.asarray(RNG.integers(2, 60, (2, p + g)))
    resp = jnp.zeros((2, p + g), bool).at[:, p:].set(True)

    @nnx.jit
    def run(model, seq):
        _, aux = model.with_attention(seq, None, attn_mean=True)
        return aux, obj.attention_order(aux["attn_mean"], ~resp, resp, 2, num_steps=3)

    aux, order = run(tiny_dream, seq)
    attn = np.asarray(aux["attn_mean"], np.float64)
    np.testing.assert_array_equal(np.asarray(order),
                                  _naive_order(attn, ~np.asarray(resp), np.asarray(resp), 2))
    np.testing.assert_allclose(np.asarray(obj.influence(aux["attn_mean"])),
                               np.asarray(aux["I"]), atol=1e-6)


def test_order_ignores_prompt_padding(tiny_llada):
    """A left-padded prompt (attention mask 0 on the pads) gets the same attention order and
    the same influence on its real tokens as the prompt alone; pads get influence 0 and never
    join the committed set. Without the mask the order changes (so the test can fail)."""
    from flax import nnx

    from dllm_jax.programs.losses import agdo_order

    p, g, pad = 4, 6, 3
    seq = RNG.integers(2, 60, (2, p + g))
    padded = np.concatenate([np.zeros((2, pad), seq.dtype), seq], 1)
    amask = np.concatenate([np.zeros((2, pad)), np.ones((2, p + g))], 1).astype(np.int32)
    graphdef, state = nnx.split(tiny_llada)
    params = nnx.to_pure_dict(state)
    order, infl = agdo_order(graphdef, params, jnp.asarray(seq), p, 1)
    order_pad, infl_pad = agdo_order(graphdef, params, jnp.asarray(padded), p + pad, 1,
                                     jnp.asarray(amask))
    np.testing.assert_array_equal(np.asarray(order_pad), np.asarray(order))
    np.testing.assert_allclose(np.asarray(infl_pad)[:, pad:], np.asarray(infl), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(infl_pad)[:, :pad], 0.0)
    order_nomask, _ = agdo_order(graphdef, params, jnp.asarray(padded), p + pad, 1)
    assert not np.array_equal(np.asarray(order_nomask), np.asarray(order))


def test_agdo_validation():
    a = jnp.ones((1, 4, 4)) / 4
    m = jnp.ones((1, 4), bool)
    with pytest.raises(ValueError, match="n_per_step must be >= 1"):
        obj.attention_order(a, ~m, m, 0)
    with pytest.raises(ValueError, match="response_mask_BL must have shape"):
        obj.attention_order(a, ~m, m[:, :3], 1)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        obj.agdo_sft_loss(jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.zeros((2, 3)), -1.0)
