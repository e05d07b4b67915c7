"""Losses against naive NumPy loops of the formulas, gradients, and their properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import objectives as obj

RNG = np.random.default_rng(0)
B, L, G = 6, 7, 3


def _arrays():
    logp = -RNG.uniform(0.05, 3.0, (B, L))
    old = logp + RNG.normal(0, 0.3, (B, L))
    ref = logp + RNG.normal(0, 0.3, (B, L))
    mask = (RNG.uniform(size=(B, L)) < 0.7).astype(np.float64)
    mask[:, 0] = 1
    adv = RNG.normal(size=B)
    return logp, old, ref, mask, adv


def naive_grpo(logp, old, ref, adv, mask, eps, beta):
    total = 0.0
    for b in range(logp.shape[0]):
        s, n = 0.0, 0
        for i in range(logp.shape[1]):
            if mask[b, i]:
                rho = np.exp(logp[b, i] - old[b, i])
                o = min(rho * adv[b], np.clip(rho, 1 - eps, 1 + eps) * adv[b])
                d = ref[b, i] - logp[b, i]
                s += -o + beta * (np.exp(d) - d - 1)
                n += 1
        total += s / max(n, 1)
    return total / logp.shape[0]


def naive_tracerl(logp, old, adv, mask, eps, num_rollouts):
    total = 0.0
    for s in range(logp.shape[0]):
        vals = [-min(np.exp(logp[s, i] - old[s, i]) * adv[s],
                     np.clip(np.exp(logp[s, i] - old[s, i]), 1 - eps, 1 + eps) * adv[s])
                for i in range(logp.shape[1]) if mask[s, i]]
        if vals:
            total += np.mean(vals)
    return total / num_rollouts


def naive_wd1(logp, mask, adv, g):
    out = []
    for grp in range(len(adv) // g):
        idx = range(grp * g, (grp + 1) * g)
        a = np.array([adv[i] for i in idx])
        wp, wn = np.exp(a) / np.exp(a).sum(), np.exp(-a) / np.exp(-a).sum()
        seq = np.array([(logp[i] * mask[i]).sum() for i in idx])
        out.append(-(wp * seq).sum() + (wn * seq).sum())
    return np.mean(out)


def naive_sft(logp, masked, p_mask, resp):
    rows = []
    for b in range(logp.shape[0]):
        s = sum(-logp[b, i] / p_mask[b] for i in range(logp.shape[1])
                if masked[b, i] and resp[b, i])
        rows.append(s / max(resp[b].sum(), 1))
    return np.mean(rows)


def _grad_check(f, x, naive, h=1e-6, tol=1e-5):
    """Gradient of the JAX loss (float64) against central differences of the naive loop."""
    g = np.asarray(jax.grad(f)(jnp.asarray(x)))
    idx = [(0, 0), (1, 2), (3, 4), (5, 6)]
    for ij in idx:
        xp, xm = x.copy(), x.copy()
        xp[ij] += h
        xm[ij] -= h
        fd = (naive(xp) - naive(xm)) / (2 * h)
        assert abs(g[ij] - fd) < tol, (ij, g[ij], fd)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def test_diffu_grpo_matches_naive_and_grad():
    logp, old, ref, mask, adv = _arrays()
    f = lambda lp: obj.diffu_grpo_loss(lp, old, ref, adv, mask, eps=0.2, beta=0.04)[0]
    np.testing.assert_allclose(float(f(logp)), naive_grpo(logp, old, ref, adv, mask, 0.2, 0.04),
                               rtol=1e-10, atol=1e-10)
    _grad_check(f, logp, lambda lp: naive_grpo(lp, old, ref, adv, mask, 0.2, 0.04))


def test_tracerl_and_wd1_match_naive():
    logp, old, _, mask, adv = _arrays()
    f = lambda lp: obj.tracerl_loss(lp, old, None, adv, mask, 2, eps=0.2, beta=0.0)[0]
    np.testing.assert_allclose(float(f(logp)), naive_tracerl(logp, old, adv, mask, 0.2, 2),
                               rtol=1e-10)
    _grad_check(f, logp, lambda lp: naive_tracerl(lp, old, adv, mask, 0.2, 2))
    g = lambda lp: obj.wd1_loss(lp, mask, adv, G)[0]
    np.testing.assert_allclose(float(g(logp)), naive_wd1(logp, mask, adv, G), rtol=1e-10)
    _grad_check(g, logp, lambda lp: naive_wd1(lp, mask, adv, G))


def test_sft_and_pretraining_losses():
    logp, _, _, mask, _ = _arrays()
    masked = RNG.uniform(size=(B, L)) < 0.5
    p_mask = RNG.uniform(0.1, 1.0, B)
    f = lambda lp: obj.sft_loss(lp, masked, p_mask, mask)[0]
    np.testing.assert_allclose(float(f(logp)), naive_sft(logp, masked, p_mask, mask), rtol=1e-10)
    _grad_check(f, logp, lambda lp: naive_sft(lp, masked, p_mask, mask))
    pre = obj.masked_diffusion_loss(jnp.asarray(logp), masked, p_mask)[0]
    expect = sum(-logp[b, i] / p_mask[b] for b in range(B) for i in range(L) if masked[b, i])
    np.testing.assert_allclose(float(pre), expect / (B * L), rtol=1e-10)


def test_forward_mask_rate_and_prompt_untouched():
    tokens = jnp.arange(4000 * 8).reshape(4000, 8) % 50
    maskable = jnp.zeros((4000, 8), bool).at[:, 3:].set(True)
    noisy, masked, p = obj.forward_mask(jax.random.PRNGKey(0), tokens, maskable, 63)
    assert not masked[:, :3].any() and (noisy[masked] == 63).all()
    rate = np.asarray(masked[:, 3:]).mean(1)
    np.testing.assert_allclose(rate.mean(), np.asarray(p).mean(), atol=0.01)
    assert float(p.min()) >= 1e-3


def test_advantages():
    r = jnp.asarray([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 4.0])
    c = np.asarray(obj.group_advantages(r, 3, "center"))
    np.testing.assert_allclose(c, [1 / 3, -2 / 3, 1 / 3, 0, 0, 0, -2, 0, 2], atol=1e-12)
    z = np.asarray(obj.group_advantages(r, 3, "zscore"))
    np.testing.assert_allclose(z[3:6], 0.0)  # uniform group: zero, not NaN
    np.testing.assert_allclose(z[6:], np.array([-2, 0, 2]) / np.std([0, 2, 4]), atol=1e-12)
    with pytest.raises(ValueError, match="unknown advantage mode"):
        obj.group_advantages(r, 3, "rank")


def test_policy_gradient_properties():
    logp, _, ref, mask, adv = _arrays()
    lp = jnp.asarray(logp)
    # Zero advantage and no KL: zero gradient.
    g0 = jax.grad(lambda x: obj.diffu_grpo_loss(x, lp, None, jnp.zeros(B), mask, beta=0.0)[0])(lp)
    assert np.abs(np.asarray(g0)).max() == 0
    # Ratio 1 (old == current), no KL: the REINFORCE gradient -A * mask / n_b / B.
    g1 = jax.grad(lambda x: obj.diffu_grpo_loss(x, jax.lax.stop_gradient(x), None, adv, mask,
                                                beta=0.0)[0])(lp)
    expect = -adv[:, None] * mask / mask.sum(1, keepdims=True) / B
    np.testing.assert_allclose(np.asarray(g1), expect, atol=1e-12)
    # Clipping: ratio above 1 + eps with A > 0 gives no gradient; below 1 - eps with A < 0 too.
    old = lp - 1.0  # rho = e > 1.2
    g2 = jax.grad(lambda x: obj.diffu_grpo_loss(x, old, None, jnp.ones(B), mask, eps=0.2,
                                                beta=0.0)[0])(lp)
    assert np.abs(np.asarray(g2)).max() == 0
    g3 = jax.grad(lambda x: obj.diffu_grpo_loss(x, old, None, -jnp.ones(B), mask, eps=0.2,
                                                beta=0.0)[0])(lp)
    assert (np.abs(np.asarray(g3))[mask > 0] > 0).all()  # not clipped on the other side


def test_tracerl_shrinkage_one_equals_per_token_objective():
    """One token per step and shrinkage 1: each state has one target token, so the trajectory
    loss is the sum over tokens of the per-token clipped objective, over the rollout count."""
    r, g = 2, 5
    step_map = jnp.asarray([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    masked, targets = obj.tracerl_states(step_map, num_steps=5, shrinkage=1)
    assert targets.sum(-1).max() == 1 and targets.sum() == r * g
    logp = -RNG.uniform(0.1, 2, (r, g))
    old = logp + RNG.normal(0, 0.2, (r, g))
    adv = np.array([0.7, -1.3])
    # Scoring per state: the state's target token's log-prob (here the same numbers).
    lp_s = jnp.repeat(jnp.asarray(logp)[:, None], 5, 1).reshape(r * 5, g)
    old_s = jnp.repeat(jnp.asarray(old)[:, None], 5, 1).reshape(r * 5, g)
    loss, _ = obj.tracerl_loss(lp_s, old_s, None, jnp.repeat(jnp.asarray(adv), 5),
                               targets.reshape(r * 5, g), r, eps=0.2, beta=0.0)
    per_tok, _ = obj.clipped_objective(jnp.asarray(logp), jnp.asarray(old),
                                       jnp.asarray(adv)[:, None], 0.2)
    np.testing.assert_allclose(float(loss), float(-per_tok.sum() / r), rtol=1e-12)
    # Masking: a state's input masks exactly the tokens committed at or after its step.
    np.testing.assert_array_equal(np.asarray(masked[0, 2]), [False, False, True, True, True])


def test_completion_mask_until_eos():
    m = obj.completion_mask_until_eos(jnp.asarray([[5, 1, 7, 1], [5, 6, 7, 8]]), 1)
    np.testing.assert_array_equal(np.asarray(m), [[1, 1, 0, 0], [1, 1, 1, 1]])


def test_registry():
    for name in ("sft", "diffu_grpo", "tracerl", "wd1", "agdo_sft", "agdo_rl"):
        spec = obj.get_loss(name)
        spec.config()  # defaults validate
    with pytest.raises(ValueError, match="unknown loss"):
        obj.get_loss("ppo")
    with pytest.raises(ValueError, match="shrinkage must be >= 1"):
        obj.get_loss("tracerl").config(shrinkage=0)
