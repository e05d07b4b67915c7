"""Losses against naive NumPy loops of the formulas, gradients, and their properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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
    g = jax.grad(lambda lp: obj.masked_diffusion_loss(lp, masked, p_mask)[0])(jnp.asarray(logp))
    np.testing.assert_allclose(np.asarray(g), -masked.astype(float) / p_mask[:, None] / (B * L),
                               atol=1e-12)
    valid = mask > 0  # padding weighted out, divisor unchanged
    pre_v = obj.masked_diffusion_loss(jnp.asarray(logp), masked, p_mask, valid)[0]
    expect_v = sum(-logp[b, i] / p_mask[b] for b in range(B) for i in range(L)
                   if masked[b, i] and valid[b, i])
    np.testing.assert_allclose(float(pre_v), expect_v / (B * L), rtol=1e-10)


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


@pytest.mark.parametrize("name", ["sft", "grpo", "tracerl", "wd1"])
def test_float32_losses_match_naive(name):
    """The float32 path (what training runs) against the float64 loops, to 1e-5."""
    logp, old, ref, mask, adv = _arrays()
    masked = RNG.uniform(size=(B, L)) < 0.5
    p_mask = RNG.uniform(0.1, 1.0, B)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    if name == "sft":
        got = obj.sft_loss(f32(logp), masked, f32(p_mask), f32(mask))[0]
        want = naive_sft(logp, masked, p_mask, mask)
    elif name == "grpo":
        got = obj.diffu_grpo_loss(f32(logp), f32(old), f32(ref), f32(adv), f32(mask), eps=0.2,
                                  beta=0.04)[0]
        want = naive_grpo(logp, old, ref, adv, mask, 0.2, 0.04)
    elif name == "tracerl":
        got = obj.tracerl_loss(f32(logp), f32(old), None, f32(adv), f32(mask), 2, eps=0.2,
                               beta=0.0)[0]
        want = naive_tracerl(logp, old, adv, mask, 0.2, 2)
    else:
        got = obj.wd1_loss(f32(logp), f32(mask), f32(adv), G)[0]
        want = naive_wd1(logp, mask, adv, G)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


def test_token_logprobs_is_float32_log_softmax_gather():
    logits = RNG.normal(size=(2, 3, 11)).astype(np.float32) * 4
    tgt = RNG.integers(0, 11, (2, 3))
    got = obj.token_logprobs(jnp.asarray(logits, jnp.bfloat16), tgt)
    assert got.dtype == jnp.float32
    lb = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64)
    want = lb - np.log(np.exp(lb).sum(-1, keepdims=True))
    want = np.take_along_axis(want, tgt[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_bad_inputs_raise_one_clear_error():
    logp, old, ref, mask, adv = _arrays()
    with pytest.raises(ValueError, match="shape mismatch"):
        obj.sft_loss(logp, mask[:, :3], np.ones(B), mask)
    with pytest.raises(ValueError, match="p_mask_B must have shape"):
        obj.masked_diffusion_loss(logp, mask, np.ones(B + 1))
    with pytest.raises(ValueError, match="adv_B must have shape"):
        obj.diffu_grpo_loss(logp, old, ref, adv[:2], mask)
    with pytest.raises(ValueError, match="eps must be in"):
        obj.forward_mask(jax.random.PRNGKey(0), jnp.zeros((2, 3), int), jnp.ones((2, 3)), 9,
                         eps=1.0)
    with pytest.raises(ValueError, match="cannot be split into groups"):
        obj.group_advantages(jnp.ones(5), 2)
    with pytest.raises(ValueError, match="group_size"):
        obj.wd1_loss(logp, mask, adv, 4)
    with pytest.raises(ValueError, match="disagree"):
        obj.token_logprobs(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), int))


# ----------------------------------------------------------------------------- states
def test_states_from_steps_matches_loop_and_tracerl_covers_each_token_once():
    b, g, t, k = 3, 10, 6, 4
    step_map = RNG.integers(0, t, (b, g))
    step_map[2, -2:] = -1  # never committed (padding)
    starts = np.sort(RNG.integers(0, t, (b, k)), axis=1)
    ends = np.minimum(starts + RNG.integers(1, 3, (b, k)), t)
    masked, targets = obj.states_from_steps(jnp.asarray(step_map), starts, ends)
    for r in range(b):
        for s in range(k):
            for i in range(g):
                assert bool(masked[r, s, i]) == (step_map[r, i] >= starts[r, s])
                assert bool(targets[r, s, i]) == (starts[r, s] <= step_map[r, i] < ends[r, s])
    _, tgt = obj.tracerl_states(jnp.asarray(step_map), 4, num_steps=t)  # states [0,4), [4,6)
    assert tgt.shape == (b, 2, g)
    np.testing.assert_array_equal(np.asarray(tgt.sum(1)), (step_map >= 0).astype(int))
    assert obj.tracerl_ranges(6, 4) == ([0, 4], [4, 6])
    batch = obj.state_batch(jnp.arange(b * (2 + g)).reshape(b, 2 + g), 2, masked, targets, 99)
    assert batch["inputs"].shape == (b * k, 2 + g)
    row = 1 * k + 2  # rollout 1, state 2
    np.testing.assert_array_equal(np.asarray(batch["inputs"][row, 2:] == 99),
                                  np.asarray(masked[1, 2]))
    assert not bool(batch["masked"][:, :2].any())
    with pytest.raises(ValueError, match="shrinkage must be >= 1"):
        obj.tracerl_states(jnp.asarray(step_map), 0, num_steps=t)


# ----------------------------------------------------------------------------- scoring
def _np_logprobs(logits, tokens):
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return np.take_along_axis(logits, tokens[..., None], -1)[..., 0] - lse


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_score_masked_equals_direct_call(family, tiny_llada, tiny_dream):
    model = tiny_llada if family == "llada" else tiny_dream
    mask_id = model.config.mask_token_id
    tokens = RNG.integers(2, 60, (2, 9))
    masked = RNG.uniform(size=(2, 9)) < 0.5
    attn = np.ones((2, 9), np.int32)
    attn[1, :2] = 0
    with jax.enable_x64(False):
        got = np.asarray(obj.score_masked(model, jnp.asarray(tokens), jnp.asarray(masked),
                                          jnp.asarray(attn)))
        aligned = np.asarray(model(jnp.asarray(np.where(masked, mask_id, tokens)),
                                   jnp.asarray(attn)))
    np.testing.assert_allclose(got, _np_logprobs(aligned, tokens), atol=1e-5)


def test_d1_inputs():
    b, p, g = 4000, 6, 4
    tokens = jnp.asarray(RNG.integers(2, 60, (b, p + g)))
    prompt = np.zeros((b, p + g), bool)
    prompt[:, 1:p] = True  # position 0 is prompt padding: never masked
    comp = np.zeros((b, p + g), bool)
    comp[:, p:] = True
    key = jax.random.PRNGKey(5)
    inp, masked = obj.d1_inputs(key, tokens, prompt, comp, 0.15, 63)
    masked = np.asarray(masked)
    assert masked[:, p:].all() and (np.asarray(inp)[:, p:] == 63).all()
    assert not masked[:, 0].any()
    np.testing.assert_array_equal(np.asarray(inp)[~masked], np.asarray(tokens)[~masked])
    rate = masked[:, 1:p].mean()
    assert abs(rate - 0.15) < 4 * np.sqrt(0.15 * 0.85 / masked[:, 1:p].size)
    _, again = obj.d1_inputs(key, tokens, prompt, comp, 0.15, 63)
    np.testing.assert_array_equal(np.asarray(again), masked)
    _, other = obj.d1_inputs(jax.random.PRNGKey(6), tokens, prompt, comp, 0.15, 63)
    assert (np.asarray(other) != masked).any()
    with pytest.raises(ValueError, match="p_mask_prompt"):
        obj.d1_inputs(key, tokens, prompt, comp, 1.5, 63)


# ----------------------------------------------------------------------------- MC likelihood
def test_mc_masks_are_stratified_and_exact():
    masks, counts = obj.mc_masks(jax.random.PRNGKey(0), 3, 5, 5)
    counts = np.asarray(counts)
    for row in counts:  # batch == T: every count 1..T exactly once
        assert sorted(row.tolist()) == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(np.asarray(masks).sum(-1), counts)
    c2 = np.asarray(obj.stratified_mask_counts(jax.random.PRNGKey(1), 2, 6))
    assert ((c2 - c2[0]) % 6).tolist() == [0, 3]  # spaced T / batch apart


@nnx.jit
def _forward(model, tokens):
    """Aligned logits of one plain model call (jitted: the loops below call it many times)."""
    return model(tokens)


def _naive_mc(model, key, prompt, answer, mc_num, batch, cfg):
    """LLaDA's get_log_likelihood, one copy at a time, with the masks the JAX code drew."""
    mask_id = model.config.mask_token_id
    p, a = prompt.shape[1], answer.shape[1]
    rounds = []
    for rk in jax.random.split(key, mc_num // batch):
        is_mask, counts = (np.asarray(x) for x in obj.mc_masks(rk, prompt.shape[0], batch, a))
        per_seq = []
        for s in range(prompt.shape[0]):
            seq = np.concatenate([prompt[s], answer[s]])
            tot = 0.0
            for c in range(batch):
                m = np.concatenate([np.zeros(p, bool), is_mask[s, c]])
                inp = np.where(m, mask_id, seq)
                lg = np.asarray(_forward(model, jnp.asarray(inp[None])))[0]
                if cfg:
                    un_in = inp.copy()
                    un_in[:p] = mask_id
                    un = np.asarray(_forward(model, jnp.asarray(un_in[None])))[0]
                    lg = un + (cfg + 1) * (lg - un)
                lp = _np_logprobs(lg[None], seq[None])[0]
                tot += -(lp * m).sum() / (counts[s, c] / a)
            per_seq.append(tot / batch)
        rounds.append(per_seq)
    return -np.mean(rounds, axis=0)


@pytest.mark.parametrize("family,cfg", [("llada", 0.0), ("dream", 0.5)])
def test_mc_log_likelihood_matches_loop(family, cfg, tiny_llada, tiny_dream):
    model = tiny_llada if family == "llada" else tiny_dream
    prompt = RNG.integers(2, 60, (2, 3))
    answer = RNG.integers(2, 60, (2, 4))
    key = jax.random.PRNGKey(7)
    with jax.enable_x64(False):
        got = obj.mc_log_likelihood(model, key, jnp.asarray(prompt), jnp.asarray(answer),
                                    mc_num=4, batch=2, cfg_scale=cfg)
        want = _naive_mc(model, key, prompt, answer, 4, 2, cfg)
        one = obj.mc_log_likelihood(model, key, jnp.asarray(prompt[0]), jnp.asarray(answer[0]),
                                    mc_num=4, batch=2, cfg_scale=cfg)
    assert got.shape == (2,) and one.shape == ()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of batch"):
        obj.mc_log_likelihood(model, key, jnp.asarray(prompt), jnp.asarray(answer), mc_num=5,
                              batch=2)


def test_mc_log_likelihood_is_unbiased():
    """The estimator's mean over many rounds equals its exact expectation, enumerated over
    every mask set of a 3-token answer (counts uniform on 1..3, sets uniform given count).
    A sharpened model makes the per-token losses differ (a random one is near-uniform)."""
    import itertools

    from helpers import sharpened, tiny_model

    model = sharpened(tiny_model("llada", seed=3))
    mask_id = model.config.mask_token_id
    prompt, answer = np.array([5, 9]), np.array([11, 17, 23])
    seq = np.concatenate([prompt, answer])
    a = len(answer)
    exact = 0.0
    for x in range(1, a + 1):
        sets = list(itertools.combinations(range(a), x))
        for subset in sets:
            m = np.zeros(len(seq), bool)
            m[[2 + j for j in subset]] = True
            with jax.enable_x64(False):
                lg = np.asarray(_forward(model, jnp.asarray(np.where(m, mask_id, seq)[None])))
            lp = _np_logprobs(lg, seq[None])[0]
            exact += (lp * m).sum() / (x / a) / len(sets) / a
    rounds = 400
    with jax.enable_x64(False):
        many = jax.vmap(lambda k: obj.mc_log_likelihood(model, k, jnp.asarray(prompt),
                                                        jnp.asarray(answer), mc_num=3, batch=3)
                        )(jax.random.split(jax.random.PRNGKey(1), rounds))
    many = np.asarray(many)
    se = many.std() / np.sqrt(rounds)
    assert abs(many.mean() - exact) < 4 * se + 1e-6, (many.mean(), exact, se)
