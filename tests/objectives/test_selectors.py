"""ATPO selectors: K distinct states, determinism, the rules against NumPy re-implementations,
and steps that committed nothing never chosen."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import objectives as obj
from dllm_jax.objectives.selectors import ScoreSelector
from dllm_jax.sampling import LLaDAConfig, generate

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


def _z(x):
    x = np.asarray(x, np.float64)
    sd = x.std(1, keepdims=True)
    return np.where(sd > 0, (x - x.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1), 0.0)


def _naive_top(score_bt, k):
    return np.stack([np.sort(np.argsort(-row, kind="stable")[:k]) for row in score_bt])


@pytest.mark.parametrize("kind,lam,average", [("atpo", 0.3, "none"), ("atpo", 0.5, "group"),
                                              ("entropy", 0.5, "batch"), ("cm", 0.5, "group")])
def test_score_rules_match_numpy(kind, lam, average):
    sel = ScoreSelector(kind=kind, lam=lam, average=average)
    if kind == "atpo":
        s = lam * _z(ROEC) + (1 - lam) * _z(1 - np.asarray(CM))
    elif kind == "entropy":
        s = _z(H)
    else:
        s = _z(1 - np.asarray(CM))
    if average == "batch":
        s = np.broadcast_to(s.mean(0), s.shape)
    elif average == "group":
        s = np.repeat(s.reshape(2, 3, T).mean(1), 3, axis=0)
    np.testing.assert_allclose(np.asarray(sel.score(H, CM, ROEC, group_size=3)), s, atol=1e-5)
    starts, ends = sel(jax.random.PRNGKey(0), H, CM, ROEC, K, group_size=3)
    np.testing.assert_array_equal(np.asarray(starts), _naive_top(s, K))
    np.testing.assert_array_equal(np.asarray(ends), _naive_top(s, K) + 1)


def test_randomness_depends_on_key_only():
    sel = obj.get_selector("random")
    a = np.asarray(sel(jax.random.PRNGKey(0), H, CM, ROEC, K)[0])
    b = np.asarray(sel(jax.random.PRNGKey(1), H, CM, ROEC, K)[0])
    assert (a != b).any()
    mixed = obj.get_selector("atpo", rho=0.5)
    c = np.asarray(mixed(jax.random.PRNGKey(0), H, CM, ROEC, K)[0])
    d = np.asarray(mixed(jax.random.PRNGKey(1), H, CM, ROEC, K)[0])
    assert (c != d).any()
    full = obj.get_selector("atpo", rho=1.0)(jax.random.PRNGKey(0), H, CM, ROEC, K)[0]
    np.testing.assert_array_equal(np.asarray(full),
                                  np.asarray(obj.get_selector("atpo")(None, H, CM, ROEC, K)[0]))


def test_selected_states_feed_the_state_builder():
    """Uniform states give every committed token exactly one target state; single-step states
    target exactly the tokens committed at their step."""
    g = 32
    step_map = jnp.asarray(RNG.permutation(np.repeat(np.arange(T), g // T)))[None].repeat(R, 0)
    starts, ends = obj.get_selector("uniform")(None, H, CM, ROEC, K)
    _, tgt = obj.states_from_steps(step_map, starts, ends)
    np.testing.assert_array_equal(np.asarray(tgt.sum(1)), np.ones((R, g), int))
    starts, ends = obj.get_selector("atpo")(None, H, CM, ROEC, K)
    masked, tgt = obj.states_from_steps(step_map, starts, ends)
    assert (np.asarray(tgt.sum(-1)) == g // T).all()
    assert (np.asarray(masked.sum(-1)) == (T - np.asarray(starts)) * (g // T)).all()


def test_selector_validation():
    with pytest.raises(ValueError, match="budget k=17"):
        obj.get_selector("uniform")(None, H, CM, ROEC, T + 1)
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        obj.get_selector("atpo", average="group")(None, H, CM, ROEC, K, group_size=4)
    with pytest.raises(ValueError, match="lam must be in"):
        obj.get_selector("atpo", lam=1.5)
    with pytest.raises(ValueError, match="share one"):
        obj.get_selector("cm")(None, H, CM[:, :3], ROEC, K)


SELECTOR_CASES = [("uniform", {}), ("random", {}), ("entropy", {}), ("roec", {}), ("cm", {}),
                  ("atpo", {}), ("atpo", {"rho": 0.5}), ("atpo", {"average": "group"}),
                  ("atpo", {"average": "none"})]


def test_no_selector_picks_an_empty_step_under_threshold_zero(sharp_llada):
    """threshold=0 commits a whole block at its first step: 2 valid steps out of 8."""
    cfg = LLaDAConfig(steps=8, gen_length=8, block_length=4, temperature=0.9, threshold=0.0)
    prompts = np.array([[3, 17, 22, 9, 41], [12, 5, 30, 2, 8]] * 2, np.int32)
    traj = generate(sharp_llada, prompts, config=cfg, key=5, record=True).trajectory
    committed = [set(row.tolist()) for row in np.asarray(traj.step_map)]
    assert committed == [{0, 4}] * 4
    np.testing.assert_array_equal(np.asarray(traj.valid), np.asarray(traj.num_committed) > 0)
    t = traj.entropy.shape[1]
    for name, kw in SELECTOR_CASES:
        sel = obj.get_selector(name, **kw)
        for k in (1, 2, 3, 5):
            starts, ends = sel(jax.random.PRNGKey(k), traj.entropy, traj.margin, traj.roec, k,
                               group_size=2, valid_BT=traj.valid)
            for row, (s, e) in enumerate(zip(np.asarray(starts), np.asarray(ends),
                                             strict=True)):
                picked = [(a, b) for a, b in zip(s.tolist(), e.tolist(), strict=True)
                          if (a, b) != (t, t)]  # [T, T): an empty filler state
                assert all(a in committed[row] and b > a for a, b in picked), (name, kw, k)
                assert len(picked) == min(k, 2) and len({a for a, _ in picked}) == len(picked)


@pytest.mark.parametrize("name,kw", [c for c in SELECTOR_CASES  # the deterministic ones
                                     if c[0] != "random" and "rho" not in c[1]])
def test_selectors_ignore_inserted_invalid_steps(name, kw):
    """Inserting invalid steps (garbage profiles) at the same places in every row moves the
    chosen states with their steps and changes nothing else."""
    rng = np.random.default_rng(4)
    extra = 7
    slots = np.sort(rng.choice(T + extra, extra, replace=False))
    pos = np.setdiff1d(np.arange(T + extra), slots)  # where each original step goes

    def pad(x):
        out = rng.uniform(-3, 3, (R, T + extra))
        out[:, pos] = np.asarray(x)
        return jnp.asarray(out, jnp.float32)

    valid = np.zeros((R, T + extra), bool)
    valid[:, pos] = True
    sel = obj.get_selector(name, **kw)
    key = jax.random.PRNGKey(0)
    s0, e0 = sel(key, H, CM, ROEC, K, group_size=3)
    s1, e1 = sel(key, pad(H), pad(CM), pad(ROEC), K, group_size=3, valid_BT=jnp.asarray(valid))
    to_padded = np.append(pos, T + extra)  # step T (one past the end) maps to the new end
    np.testing.assert_array_equal(np.asarray(s1), to_padded[np.asarray(s0)])
    np.testing.assert_array_equal(np.asarray(e1), to_padded[np.asarray(e0)] if name == "uniform"
                                  else to_padded[np.asarray(s0)] + 1)
