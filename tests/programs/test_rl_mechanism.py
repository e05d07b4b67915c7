"""Mechanism tests of every RL loss in the registry, through the RL program's loss function
(``make_rl_loss``), against objectives written here from the published formulas:

- at the first inner iteration (old log-probs = current ones, ratio 1) the gradient equals the
  policy gradient of ``mean A * log p(targeted committed tokens)`` (plus the KL term);
- zero-variance groups give zero gradient; the KL gradient is zero when policy = reference;
- one update at a moderate learning rate raises a positive-advantage rollout's log-probability
  and lowers a negative one's.

Nothing here calls the library's loss formulas: log-probs come from the model's raw logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tiny_model

from dllm_jax import objectives as obj
from dllm_jax.programs.config import RLConfig
from dllm_jax.programs.losses import make_rl_loss
from dllm_jax.sampling import LLaDAConfig

P, A, G, NPROMPT = 4, 8, 2, 2  # prompt length, completion length, group size, prompts
R = G * NPROMPT
K = 2  # states per rollout for the trajectory losses
BETA = 0.3
DELTA = 2.0
STATE_LOSSES = ("tracerl", "agdo_rl")


def rl_config(loss: str, beta: float) -> RLConfig:
    kw = dict(beta=beta) if loss in ("tracerl", "diffu_grpo", "agdo_rl") else {}
    if loss in STATE_LOSSES:
        kw["budget"] = K
    if loss == "agdo_rl":
        kw["delta"] = DELTA
    return RLConfig(loss=loss, prompts_per_step=NPROMPT, group_size=G, inner_iterations=1,
                    sampler=LLaDAConfig(steps=A, gen_length=A, block_length=A,
                                        temperature=1.0), **kw).resolved()


def raw_logp(model, inputs, tokens, amask):
    """log softmax of the model's logits at each position, of the given tokens."""
    logits = model(inputs, amask).astype(jnp.float32)
    lp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0]


def make_rows(loss: str, model, ref_model, adv_R, seed: int = 0) -> dict:
    """Hand-built rows of one RL step: random completions; trajectory losses get K = 2 states
    per rollout (state 0 masks the whole completion and targets its first half, state 1 masks
    the second half and targets it); one-step losses mask the completion fully."""
    rng = np.random.default_rng(seed)
    mask_id = model.config.mask_token_id
    seqs = rng.integers(2, 60, size=(R, P + A)).astype(np.int32)
    if loss in STATE_LOSSES:
        tokens = np.repeat(seqs, K, axis=0)
        inputs = tokens.copy()
        targets = np.zeros(tokens.shape, np.float32)
        inputs[0::K, P:] = mask_id
        targets[0::K, P:P + A // 2] = 1
        inputs[1::K, P + A // 2:] = mask_id
        targets[1::K, P + A // 2:] = 1
        adv = np.repeat(adv_R, K)
    else:
        tokens, inputs = seqs, seqs.copy()
        inputs[:, P:] = mask_id
        targets = np.zeros(tokens.shape, np.float32)
        targets[:, P:] = 1
        adv = np.asarray(adv_R)
    n = tokens.shape[0]
    amask = np.ones(tokens.shape, np.int32)
    rows = {"inputs": inputs, "tokens": tokens, "attention_mask": amask, "targets": targets,
            "adv": adv.astype(np.float32), "reward": np.zeros(n, np.float32),
            "zero_var": np.zeros(n, np.float32)}
    rows = {k: jnp.asarray(v) for k, v in rows.items()}
    old = raw_logp(model, rows["inputs"], rows["tokens"], rows["attention_mask"])
    rows["old_logp"] = jax.lax.stop_gradient(old)
    rows["ref_logp"] = jax.lax.stop_gradient(
        raw_logp(ref_model, rows["inputs"], rows["tokens"], rows["attention_mask"]))
    if loss == "agdo_rl":
        rows["influence"] = jnp.asarray(rng.uniform(0, 0.2, size=tokens.shape), jnp.float32)
    return rows


def k3(lp, ref):
    return jnp.exp(ref - lp) - (ref - lp) - 1.0


def hand_loss(loss: str, model, rows, beta: float):
    """Minus the policy-gradient objective at ratio 1, written from the papers' formulas."""
    lp = raw_logp(model, rows["inputs"], rows["tokens"], rows["attention_mask"])
    m, adv, ref = rows["targets"], rows["adv"], rows["ref_logp"]
    if loss in STATE_LOSSES:  # TraceRL: per state the mean over its targets, summed / rollouts
        a_tok = adv[:, None] * jnp.ones_like(lp)
        if loss == "agdo_rl":  # A'_k = A + sign(A) delta I_k
            a_tok = adv[:, None] + jnp.sign(adv)[:, None] * DELTA * rows["influence"]
        per_state = ((-a_tok * lp + beta * k3(lp, ref)) * m).sum(1) / m.sum(1)
        return per_state.sum() / R
    if loss == "diffu_grpo":  # per row the mean over its completion tokens, mean over rows
        return (((-adv[:, None] * lp + beta * k3(lp, ref)) * m).sum(1) / m.sum(1)).mean()
    if loss == "wd1":  # -sum w+ log pi(o) + sum w- log pi(o), w = softmax over the group
        seq = (lp * m).sum(1).reshape(-1, G)
        a = adv.reshape(-1, G)
        wp = jnp.exp(a) / jnp.exp(a).sum(1, keepdims=True)
        wn = jnp.exp(-a) / jnp.exp(-a).sum(1, keepdims=True)
        return (-(wp * seq).sum(1) + (wn * seq).sum(1)).mean()
    raise AssertionError(f"no hand-written objective for RL loss {loss!r}: add one")


def grads(fn, model):
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)

    def f(p):
        return fn(nnx.merge(graphdef, nnx.State(p)))

    return jax.grad(f)(pure)


def program_loss(loss: str, beta: float):
    fn = make_rl_loss(rl_config(loss, beta), R)
    return lambda model, rows: fn(model, rows, jax.random.key(0))[0]


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def models():
    return tiny_model("llada", seed=3), tiny_model("llada", seed=4)


RL_LOSSES = obj.loss_names("rl")


@pytest.mark.parametrize("loss", RL_LOSSES)
def test_first_iteration_gradient_is_the_policy_gradient(loss, models):
    model, ref = models
    adv = np.array([1.0, -1.0, 0.5, -0.5], np.float32)
    beta = BETA if loss != "wd1" else 0.0
    rows = make_rows(loss, model, ref, adv)
    ours = program_loss(loss, beta)
    ratio = jnp.exp(raw_logp(model, rows["inputs"], rows["tokens"], rows["attention_mask"])
                    - rows["old_logp"])
    np.testing.assert_array_equal(np.asarray(ratio), 1.0)
    g_ours = flat(grads(lambda m: ours(m, rows), model))
    g_hand = flat(grads(lambda m: hand_loss(loss, m, rows, beta), model))
    assert np.abs(g_hand).max() > 1e-4  # the check has something to compare
    np.testing.assert_allclose(g_ours, g_hand, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", RL_LOSSES)
def test_zero_variance_groups_give_zero_gradient(loss, models):
    model, _ = models
    mode = obj.config_for("rl", loss, {}).advantage
    adv = np.asarray(obj.group_advantages(jnp.array([1.0, 1.0, 0.0, 0.0]), G, mode))
    np.testing.assert_array_equal(adv, 0.0)
    rows = make_rows(loss, model, model, adv)  # reference = policy: no KL pull either
    beta = 0.0 if loss == "wd1" else BETA
    g = flat(grads(lambda m: program_loss(loss, beta)(m, rows), model))
    assert np.abs(g).max() < 1e-7


@pytest.mark.parametrize("loss", [x for x in RL_LOSSES if x != "wd1"])
def test_kl_gradient_vanishes_at_the_reference(loss, models):
    model, other = models
    zero = np.zeros(R, np.float32)
    at_ref = make_rows(loss, model, model, zero)
    g = flat(grads(lambda m: program_loss(loss, BETA)(m, at_ref), model))
    assert np.abs(g).max() < 1e-7
    away = make_rows(loss, model, other, zero)  # another reference: the KL term pulls
    g_away = flat(grads(lambda m: program_loss(loss, BETA)(m, away), model))
    g_hand = flat(grads(lambda m: hand_loss(loss, m, away, BETA), model))
    assert np.abs(g_away).max() > 1e-4
    np.testing.assert_allclose(g_away, g_hand, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", RL_LOSSES)
def test_one_update_moves_rollouts_with_their_advantage(loss, models):
    model, _ = models
    adv = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
    rows = make_rows(loss, model, model, adv, seed=1)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    fn = program_loss(loss, 0.0)
    g = jax.grad(lambda p: fn(nnx.merge(graphdef, nnx.State(p)), rows))(params)
    new = jax.tree.map(lambda p, d: p - 0.05 * d, params, g)  # one SGD step

    def seq_logp(p):
        lp = raw_logp(nnx.merge(graphdef, nnx.State(p)), rows["inputs"], rows["tokens"],
                      rows["attention_mask"])
        per_row = np.asarray((lp * rows["targets"]).sum(1))
        return per_row.reshape(R, -1).sum(1)  # per rollout (over its states)

    change = seq_logp(new) - seq_logp(params)
    assert (change[adv > 0] > 0).all(), change
    assert (change[adv < 0] < 0).all(), change
