"""Token-exact agreement of ``generate`` with loops written from the original implementations
(tests/sampling/sampling_references.py: ML-GSAI/LLaDA ``generate.py``, NVlabs/Fast-dLLM's LLaDA
samplers, Dream's ``diffusion_generate`` under transformers 4.46.2), compared raw, at
temperature 0 and, with the sampler's own random draws fed to the references, above it; the
defaults Dream resolves; ``confidence_eos_eot_inf`` never leaving a MASK.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import sharpened, tiny_model
from sampling_references import (
    EOS,
    EOT,
    MASK,
    Draws,
    dream_generation_config,
    dream_sample,
    fast_dllm_generate,
    llada_generate,
)

from dllm_jax.sampling import DreamConfig, LLaDAConfig, generate
from dllm_jax.sampling.loop import run_plan
from dllm_jax.sampling.presets import torch_linspace_f32
from dllm_jax.sampling.strategies import TopCount

PROMPT = np.array([[3, 17, 22, 9, 41], [12, 5, 30, 2, 8]], np.int64)


@pytest.fixture(scope="module")
def llada():
    """A sharpened tiny LLaDA model whose EOS, EOT and MASK logits copy (x1.02) those of tokens
    it often predicts, so EOS and EOT are committed mid-sequence and MASK is often the argmax."""
    model = sharpened(tiny_model("llada", seed=2))
    h = model.lm_head[...]
    model.lm_head[...] = (h.at[:, EOS].set(1.02 * h[:, 22]).at[:, EOT].set(1.02 * h[:, 52])
                          .at[:, MASK].set(1.02 * h[:, 46]))
    return model


@pytest.fixture(scope="module")
def dream():
    """Mildly sharpened: peaked enough to order positions, flat enough that dropping the 14
    least likely of 64 tokens (top_k=50) changes the renormalised confidences."""
    return sharpened(tiny_model("dream", seed=1), factor=2.0)


# --- the comparisons ---------------------------------------------------------------------------


def _ours(model, prompt, config, seed):
    return np.asarray(generate(model, prompt, config=config, key=seed).sequences)


def test_torch_linspace_emulation_is_bit_exact():
    for steps, eps in [(8, 1e-3), (128, 1e-3), (512, 1e-3), (37, 0.01)]:
        ref = torch.linspace(1, eps, steps + 1).numpy()
        np.testing.assert_array_equal(torch_linspace_f32(1.0, eps, steps + 1), ref)


@pytest.mark.parametrize("kw", [
    dict(steps=16, gen_length=16, block_length=4),
    dict(steps=8, gen_length=12, block_length=6),  # 2, 2, 1, 1 tokens per step
    dict(steps=8, gen_length=16, block_length=8, cfg_scale=1.5),
    dict(steps=16, gen_length=16, block_length=16, logits_eos_inf=True),
    dict(steps=16, gen_length=16, block_length=4, confidence_eos_eot_inf=True),
])
def test_llada_matches_reference_at_temperature_zero(llada, kw):
    ref = llada_generate(llada, torch.from_numpy(PROMPT), Draws(0), **kw).numpy()
    cfg = LLaDAConfig(**kw, eot_token_id=EOT if kw.get("confidence_eos_eot_inf") else None)
    np.testing.assert_array_equal(_ours(llada, PROMPT, cfg, 0), ref)
    assert len(set(ref[:, 5:].ravel().tolist())) > 3  # the test model is not degenerate


def test_llada_reference_outputs_continue_after_eos(llada):
    """The comparisons above are raw: the references commit tokens after an EOS."""
    ref = llada_generate(llada, torch.from_numpy(PROMPT), Draws(0), steps=16, gen_length=16,
                         block_length=4).numpy()[:, 5:]
    after = [r[list(r).index(EOS) + 1:] for r in ref if EOS in r]
    assert after and any((a != EOS).any() for a in after)


@pytest.mark.parametrize("kw", [
    dict(remasking="low_confidence", temperature=0.8),
    dict(remasking="random", temperature=0.8),
    dict(remasking="tpp", temperature=1.0),
    dict(remasking="topk_margin", temperature=0.5, top_k=8),
    dict(remasking="entropy", temperature=1.0, top_p=0.9),
    dict(remasking="max_s", temperature=0.5),
    dict(remasking="low_confidence", temperature=0.5, alg_temp=0.5),
    dict(remasking="low_confidence", temperature=0.3, confidence_eos_eot_inf=True),  # EOT only
], ids=lambda kw: "-".join(map(str, kw.values())))
def test_llada_matches_reference_with_the_same_draws(llada, kw):
    common = dict(steps=8, gen_length=8, block_length=4)
    ref = llada_generate(llada, torch.from_numpy(PROMPT), Draws(7), **common, **kw).numpy()
    cfg = LLaDAConfig(**common, **kw,
                      eot_token_id=EOT if kw.get("confidence_eos_eot_inf") else None)
    np.testing.assert_array_equal(_ours(llada, PROMPT, cfg, 7), ref)


@pytest.mark.parametrize("kw", [
    dict(threshold=0.7, steps=4, temperature=0.5, cache="dual"),
    dict(threshold=0.7, steps=4, remasking="random", temperature=0.5, cache="prefix"),
    dict(steps=8, temperature=0.5, cache="prefix"),
    dict(steps=8, cache="dual"),
], ids=lambda kw: "-".join(map(str, kw.values())))
def test_llada_matches_fast_dllm(llada, kw):
    kw = dict(gen_length=8, block_length=4, **kw)
    ref = fast_dllm_generate(llada, torch.from_numpy(PROMPT), Draws(3), **kw).numpy()
    np.testing.assert_array_equal(_ours(llada, PROMPT, LLaDAConfig(**kw), 3), ref)


def test_threshold_runs_until_the_block_is_complete(llada):
    """Fast-dLLM's threshold loop has no step budget: with 2 steps per block the blocks need
    more, and the sampler takes them (one step slot per position)."""
    kw = dict(steps=4, gen_length=8, block_length=4, threshold=0.9)
    ref = fast_dllm_generate(llada, torch.from_numpy(PROMPT), Draws(0), **kw).numpy()
    out = generate(llada, PROMPT, config=LLaDAConfig(**kw), key=0, record=True)
    np.testing.assert_array_equal(np.asarray(out.sequences), ref)
    ncom = np.asarray(out.trajectory.num_committed)
    assert ncom.shape == (2, 8) and (ncom.reshape(2, 2, 4).sum(-1) == 4).all()
    assert ((ncom.reshape(2, 2, 4) > 0).sum(-1) > 2).any()
    assert not (np.asarray(out.sequences) == MASK).any()


def test_dream_defaults_are_the_originals_effective_defaults():
    effective = dream_generation_config()
    ours = DreamConfig()
    assert (ours.temperature, ours.top_k) == (effective["temperature"], effective["top_k"])
    assert effective["top_p"] == 1.0 and ours.top_p is None  # both filter nothing
    assert (ours.steps, ours.eps, ours.alg, ours.alg_temp) == (
        effective["steps"], effective["eps"], effective["alg"], effective["alg_temp"])


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_dream_default_top_k_matches_the_original_without_top_k(dream, alg):
    """No ``top_k`` given on either side: the original runs with the inherited top_k=50."""
    prompt = PROMPT[:, :4]
    g = dream_generation_config(steps=12, max_new_tokens=12, alg=alg, temperature=0.0)
    ref = dream_sample(dream, torch.from_numpy(prompt), Draws(0), g).numpy()
    ours = _ours(dream, prompt, DreamConfig(steps=12, max_new_tokens=12, alg=alg,
                                            temperature=0.0), 0)
    np.testing.assert_array_equal(ours, ref)
    assert len(set(ref[:, 4:].ravel().tolist())) > 3


@pytest.mark.parametrize("kw", [
    dict(alg="maskgit_plus", temperature=0.0, top_k=None, top_p=0.9),  # the original's "off"
    dict(alg="origin", temperature=0.5, top_p=0.8),
    dict(alg="maskgit_plus", temperature=0.5, top_p=0.8, top_k=8),  # top-p, then top-k
    dict(alg="entropy", temperature=0.7, top_p=0.9),
    dict(alg="topk_margin", temperature=0.5, alg_temp=0.5),
], ids=lambda kw: "-".join(map(str, kw.values())))
def test_dream_matches_reference(dream, kw):
    prompt = PROMPT[:, :4]
    g = dream_generation_config(steps=8, max_new_tokens=8, **kw)
    ref = dream_sample(dream, torch.from_numpy(prompt), Draws(5), g).numpy()
    np.testing.assert_array_equal(
        _ours(dream, prompt, DreamConfig(steps=8, max_new_tokens=8, **kw), 5), ref)


def test_top_k_zero_is_no_filter(dream):
    """``top_k=0`` (the CLI's way) plans the same program as ``top_k=None`` (the original's)."""
    for cls in (DreamConfig, LLaDAConfig):
        off = [cls(steps=4, block_length=4, top_k=k, **{"max_new_tokens" if cls is DreamConfig
                                                       else "gen_length": 4}) for k in (0, None)]
        assert off[0].plan(dream.config, 4) == off[1].plan(dream.config, 4)


def test_dream_from_pretrained_resolves_like_the_original(tmp_path):
    """A checkpoint's config.json values come first; a null falls back to
    ``DreamGenerationConfig``'s own default; the caller's arguments override both."""
    config_json = {"model_type": "Dream", "top_k": 5, "temperature": None, "alg": "entropy"}
    (tmp_path / "config.json").write_text(json.dumps(config_json))
    for kwargs in ({}, {"top_k": 7, "steps": 16}):
        want = dream_generation_config(config_json, **kwargs)
        got = DreamConfig.from_pretrained(tmp_path, **kwargs)
        assert [getattr(got, k) for k in ("temperature", "top_k", "alg", "steps", "eps")] == [
            want[k] for k in ("temperature", "top_k", "alg", "steps", "eps")]
    assert DreamConfig.from_pretrained(tmp_path / "nothing_here") == DreamConfig()


def test_position_sampling_matches_multinomial():
    """``alg_temp``: Gumbel-top-k on ``conf / alg_temp`` picks the same sets, in law, as the
    originals' ``torch.multinomial(softmax(conf / alg_temp), n)`` without replacement; both
    against exact enumeration (5 sigma of 20,000 draws)."""
    conf = np.array([0.9, 0.5, 0.3, -np.inf, 0.1])  # position 3 is not a candidate
    alg_temp, n, draws = 0.5, 2, 20_000
    w = np.exp(np.where(np.isfinite(conf), conf / alg_temp, -np.inf))
    w /= w.sum()
    exact = {}
    for a in range(5):
        for b in range(5):
            if a != b and w[a] > 0 and w[b] > 0:
                key = frozenset((a, b))
                exact[key] = exact.get(key, 0.0) + w[a] * w[b] / (1 - w[a])
    rule = TopCount(alg_temp)
    cand = jnp.asarray(np.isfinite(conf))[None]
    conf_j = jnp.asarray(np.where(np.isfinite(conf), conf, 0.0), jnp.float32)[None]
    keys = jax.random.split(jax.random.PRNGKey(0), draws)
    sel = np.asarray(jax.jit(jax.vmap(lambda k: rule(
        conf_j, cand, k[None], count=jnp.int32(n), last=False, transfer_prob=0.0)[0]))(keys))
    torch.manual_seed(0)
    multi = torch.multinomial(torch.tensor(w).expand(draws, 5), n, replacement=False).numpy()
    for picks in (np.stack([np.flatnonzero(r) for r in sel]), multi):
        freq = {key: 0 for key in exact}
        for r in picks:
            freq[frozenset(r.tolist())] += 1
        for key, p in exact.items():
            sigma = np.sqrt(p * (1 - p) / draws)
            assert abs(freq[key] / draws - p) < 5 * sigma, (key, freq[key] / draws, p)


# --- confidence_eos_eot_inf never leaves a MASK -------------------------------------------------


def test_no_mask_left_for_any_rule_flag_threshold_and_cache(llada):
    """EOS, EOT and MASK win often (the ``llada`` fixture); with and without the flag, every rule,
    with and without a threshold, under every cache mode: every position is committed."""
    modes = [(th, cache) for cache in ("none", "prefix", "dual") for th in (None, 0.5)]
    rows = []  # rule i takes mode i without the flag and mode i + 1 with it (max_s: no cache)
    for i, rule in enumerate(("max_s", "low_confidence", "random", "tpp", "topk_margin",
                              "entropy")):
        for flag in (False, True):
            threshold, cache = modes[(i + flag) % len(modes)]
            rows.append(LLaDAConfig(steps=4, gen_length=8, block_length=4, temperature=0.0,
                                    remasking=rule, threshold=threshold, cache=cache,
                                    confidence_eos_eot_inf=flag, eot_token_id=EOT))
    assert len({(c.confidence_eos_eot_inf, c.threshold, c.cache) for c in rows}) == 12
    plans = [c.plan(llada.config, PROMPT.shape[1]) for c in rows]
    graphdef, state = nnx.split(llada)

    @jax.jit
    def run_all(state, prompt):
        model = nnx.merge(graphdef, state)
        mask = jnp.ones_like(prompt)
        return [run_plan(model, prompt, mask, jax.random.PRNGKey(0), p)[0] for p in plans]

    outs = [np.asarray(o) for o in run_all(state, jnp.asarray(PROMPT, jnp.int32))]
    for cfg, out in zip(rows, outs, strict=True):
        assert not (out == MASK).any(), cfg
    flagged = np.concatenate([o[:, 5:] for c, o in zip(rows, outs, strict=True)
                              if c.confidence_eos_eot_inf])
    assert np.isin(flagged, [EOS, EOT]).any()  # the flag's positions were committed too
