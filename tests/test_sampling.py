"""The compiled sampler against a plain Python loop, its invariants, batching and compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.errors import ConfigError
from dllm_jax.model.transformer import denoise_step
from dllm_jax.sampling import DreamConfig, LLaDAConfig, generate
from dllm_jax.sampling.loop import _sample
from dllm_jax.sampling.plan import propose, row_step_keys, select
from dllm_jax.sampling.record import strip_after_eos

MASK = 63
PROMPT = np.array([[3, 17, 22, 9, 41], [12, 5, 30, 2, 8]], np.int32)


def python_loop(model, prompt, config, key):
    """The same decoding as a Python loop over blocks and steps of ``denoise_step``."""
    plan = config.plan(model.config, prompt.shape[1])
    b, p = prompt.shape
    n, spb = plan.block_length, plan.steps_per_block
    x = np.concatenate([prompt, np.full((b, plan.gen_length), MASK, np.int32)], 1)
    row_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
    for blk in range(plan.num_blocks):
        lo = p + blk * n
        for j in range(spb):
            t = blk * spb + j
            logits = np.asarray(denoise_step(model, x))[:, lo:lo + n]
            s = None
            if plan.rule == "max_s":
                _, aux = model.with_attention(jnp.asarray(x), None, keys_BL=jnp.asarray(x != MASK))
                s = aux["S"][:, lo:lo + n]
            tok_keys, pos_keys = row_step_keys(row_keys, t)
            cand = jnp.asarray(x[:, lo:lo + n] == MASK)
            x0, conf, _ = propose(jnp.asarray(logits), tok_keys, pos_keys, plan, s)
            count = plan.counts[blk][j] if plan.counts is not None else 0
            tprob = plan.transfer_probs[j] if plan.transfer_probs is not None else 0.0
            sel = select(conf, cand, jnp.int32(count), pos_keys, plan, j == spb - 1,
                         jnp.float32(tprob))
            x[:, lo:lo + n] = np.where(np.asarray(sel), np.asarray(x0), x[:, lo:lo + n])
    return np.asarray(strip_after_eos(jnp.asarray(x), p, plan.eos_id, plan.pad_id))


LLADA_CASES = [
    dict(remasking="low_confidence", temperature=0.8),
    dict(remasking="random", temperature=0.8),
    dict(remasking="tpp", temperature=1.0),
    dict(remasking="topk_margin", temperature=0.5, top_k=8),
    dict(remasking="entropy", temperature=0.5, top_p=0.9),
    dict(remasking="max_s", temperature=0.5),
    dict(remasking="low_confidence", temperature=0.5, threshold=0.6),
    dict(remasking="low_confidence", temperature=0.5, alg_temp=0.5),
]


@pytest.mark.parametrize("kw", LLADA_CASES, ids=lambda kw: "-".join(map(str, kw.values())))
def test_scan_equals_python_loop_llada(sharp_llada, kw):
    cfg = LLaDAConfig(steps=8, gen_length=8, block_length=4, **kw)
    key = jax.random.PRNGKey(7)
    out = generate(sharp_llada, PROMPT, config=cfg, key=key)
    np.testing.assert_array_equal(np.asarray(out.sequences),
                                  python_loop(sharp_llada, PROMPT, cfg, key))


@pytest.mark.parametrize("alg", ["origin", "maskgit_plus", "entropy"])
def test_scan_equals_python_loop_dream(sharp_dream, alg):
    cfg = DreamConfig(steps=6, max_new_tokens=6, alg=alg, temperature=0.7, top_p=0.95)
    key = jax.random.PRNGKey(3)
    out = generate(sharp_dream, PROMPT[:, :4], config=cfg, key=key)
    np.testing.assert_array_equal(np.asarray(out.sequences),
                                  python_loop(sharp_dream, PROMPT[:, :4], cfg, key))


def test_schedule_invariants(sharp_llada):
    cfg = LLaDAConfig(steps=9, gen_length=12, block_length=4, temperature=1.0,
                      remasking="random")
    out = generate(sharp_llada, PROMPT, config=cfg, key=11, record=True)
    seqs, traj = np.asarray(out.sequences), out.trajectory
    smap = np.asarray(traj.step_map)
    # LLaDA's schedule for 4 masked tokens over 3 steps: 2, 1, 1 in every block.
    np.testing.assert_array_equal(np.asarray(traj.num_committed), np.tile([2, 1, 1], (2, 3)))
    # Nothing outside the current block is committed: block b's steps are 3b .. 3b + 2.
    blocks = np.arange(12) // 4
    assert ((smap >= 3 * blocks) & (smap < 3 * blocks + 3)).all()
    # Committed tokens never change: the per-step record replays into the final sequence.
    assert not (seqs == MASK).any()
    np.testing.assert_array_equal(seqs[:, :5], PROMPT)
    conf = np.asarray(traj.confidence)
    assert ((conf > 0) & (conf <= 1)).all()


def test_each_position_committed_exactly_once(sharp_llada):
    """A position is written once and then frozen: per-step commit counts equal the number of
    positions whose step map names that step (a rewrite would be counted twice)."""
    cfg = LLaDAConfig(steps=8, gen_length=8, block_length=4, temperature=0.9, threshold=0.5)
    out = generate(sharp_llada, PROMPT, config=cfg, key=5, record=True)
    smap = np.asarray(out.trajectory.step_map)
    ncom = np.asarray(out.trajectory.num_committed)
    for row in range(2):
        np.testing.assert_array_equal(np.bincount(smap[row], minlength=8), ncom[row])
    assert (ncom.sum(1) == 8).all() and not (np.asarray(out.sequences) == MASK).any()


def test_row_independent_of_batch_and_padding(sharp_llada):
    cfg = LLaDAConfig(steps=8, gen_length=8, block_length=4, temperature=0.7)
    alone = np.asarray(generate(sharp_llada, [[7, 8, 9]], config=cfg, key=3).sequences)
    batch = np.asarray(generate(sharp_llada, [[7, 8, 9], [1, 2, 3, 4, 5, 6, 10]], config=cfg,
                                key=3).sequences)
    np.testing.assert_array_equal(batch[0, 4:], alone[0])  # row 0 left-padded by 4
    assert batch[0, :4].tolist() == [1, 1, 1, 1]


def test_compiles_once_per_shape_and_config(sharp_llada):
    cfg = LLaDAConfig(steps=4, gen_length=8, block_length=4, temperature=0.5)
    generate(sharp_llada, PROMPT, config=cfg, key=0)
    before = _sample._cache_size()
    rng = np.random.default_rng(0)
    for seed in range(3):
        generate(sharp_llada, rng.integers(0, 60, PROMPT.shape), config=cfg, key=seed)
    assert _sample._cache_size() == before


def test_eos_and_mask_handling(sharp_llada):
    seq = jnp.asarray([[5, 6, 9, 1, 9, 1, 9]])
    np.testing.assert_array_equal(np.asarray(strip_after_eos(seq, 2, 1, 0)),
                                  [[5, 6, 9, 1, 0, 0, 0]])
    # Forbid everything but MASK and EOS through the logits: MASK is still never produced.
    cfg = LLaDAConfig(steps=4, gen_length=4, block_length=4, logits_eos_inf=True)
    out = np.asarray(generate(sharp_llada, PROMPT, config=cfg, key=0).sequences)
    assert not (out == MASK).any() and not (out[:, 5:] == 1).any()


@pytest.mark.parametrize("kw,msg", [
    (dict(gen_length=10, block_length=4), "not divisible by block_length"),
    (dict(gen_length=8, block_length=4, steps=3), "not divisible by the number of blocks"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(remasking="lowest"), "unknown remasking"),
    (dict(cache="triple"), "cache must be one of"),
])
def test_bad_config_one_clear_error(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        LLaDAConfig(**kw)


def test_dream_bad_alg():
    with pytest.raises(ConfigError, match="unknown alg"):
        DreamConfig(alg="best")
