"""The loss registry: published defaults, program sections, and the rows and loss calls each
entry gives the training programs (against hand-worked states and naive loops)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_objectives import (
    RNG,
    B,
    G,
    L,
    _arrays,
    naive_grpo,
    naive_sft,
    naive_tracerl,
    naive_wd1,
)

from dllm_jax import objectives as obj


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def test_registry():
    for name in ("sft", "diffu_grpo", "tracerl", "wd1", "agdo_sft", "agdo_rl"):
        spec = obj.get_loss(name)
        spec.config()  # defaults validate
    with pytest.raises(ValueError, match="unknown loss"):
        obj.get_loss("ppo")
    with pytest.raises(ValueError, match="shrinkage must be >= 1"):
        obj.get_loss("tracerl").config(shrinkage=0)


def test_registry_configs_and_kwargs():
    cfg = obj.get_loss("diffu_grpo").config(eps=0.3, beta=0.0)
    assert obj.get_loss("diffu_grpo").loss_kwargs(cfg) == {"eps": 0.3, "beta": 0.0}
    assert obj.get_loss("agdo_rl").loss_kwargs(obj.get_loss("agdo_rl").config()) == {
        "delta": 5.0, "eps": 0.2, "beta": 0.0}
    with pytest.raises(TypeError):  # keyword-only
        obj.get_loss("sft").config(1e-3)
    with pytest.raises(ValueError, match="advantage must be one of"):
        obj.get_loss("wd1").config(advantage="rank")
    with pytest.raises(ValueError, match="eps .* must be in"):
        obj.get_loss("diffu_grpo").config(eps=1.5)
    with pytest.raises(ValueError, match="expected a TraceRLConfig"):
        obj.get_loss("tracerl").loss_kwargs(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.eps = 0.1


# The published defaults, written out from the papers (docs/objectives.md, "Loss registry").
PUBLISHED = {
    "sft": {"eps": 1e-3},
    "agdo_sft": {"gamma": 100.0, "n_per_step": 1},
    "diffu_grpo": {"eps": 0.5, "beta": 0.04, "p_mask_prompt": 0.15, "inner_iterations": 12,
                   "advantage": "center"},
    "tracerl": {"eps": 0.2, "beta": 0.01, "shrinkage": 8, "inner_iterations": 1,
                "advantage": "zscore"},
    "wd1": {"p_mask_prompt": 0.15, "inner_iterations": 1, "advantage": "center"},
    "agdo_rl": {"delta": 5.0, "eps": 0.2, "beta": 0.0, "n_per_step": 1, "shrinkage": 8,
                "inner_iterations": 1, "advantage": "zscore"},
}


def test_registry_published_defaults_and_programs():
    assert set(obj.LOSSES) == set(PUBLISHED)
    for name, want in PUBLISHED.items():
        assert dataclasses.asdict(obj.get_loss(name).config()) == want, name
    assert obj.loss_names("sft") == ["agdo_sft", "sft"]
    assert obj.loss_names("rl") == ["agdo_rl", "diffu_grpo", "tracerl", "wd1"]


def test_registry_config_for_a_program_section():
    cfg = obj.config_for("rl", "diffu_grpo", {"eps": None, "beta": 0.1, "delta": None})
    assert (cfg.eps, cfg.beta, cfg.inner_iterations) == (0.5, 0.1, 12)
    assert obj.resolved_knobs(cfg, {"eps": None, "delta": None}) == {"eps": 0.5, "delta": None}
    with pytest.raises(ValueError, match="rl.delta does not apply to loss 'tracerl'"):
        obj.config_for("rl", "tracerl", {"delta": 1.0, "eps": None})
    with pytest.raises(ValueError, match=r"sft.loss must be one of \['agdo_sft', 'sft'\]"):
        obj.config_for("sft", "tracerl", {})
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        obj.config_for("sft", "agdo_sft", {"gamma": -1.0})


def _naive_token_adv_trajectory(logp, old, adv_tok, mask, eps, num_rollouts):
    total = 0.0
    for s in range(logp.shape[0]):
        vals = []
        for i in range(logp.shape[1]):
            if mask[s, i]:
                rho, a = np.exp(logp[s, i] - old[s, i]), adv_tok[s, i]
                vals.append(-min(rho * a, np.clip(rho, 1 - eps, 1 + eps) * a))
        total += np.mean(vals) if vals else 0.0
    return total / num_rollouts


def test_registry_loss_calls_give_each_function_its_rows():
    """Each entry's ``loss`` on hand-made rows equals the naive loop of its formula (so the
    entries pass the rows to the right arguments)."""
    logp, old, ref, mask, adv = _arrays()
    infl = RNG.uniform(0, 0.3, (B, L))
    masked = RNG.uniform(size=(B, L)) < 0.5
    p_mask = RNG.uniform(0.1, 1.0, B)
    rows = {"old_logp": old, "ref_logp": ref, "adv": adv, "targets": mask, "influence": infl,
            "masked": masked, "p_mask": p_mask, "response_mask": mask}
    spec = obj.get_loss("diffu_grpo")
    got = spec.loss(spec.config(eps=0.2), logp, rows)[0]
    np.testing.assert_allclose(float(got), naive_grpo(logp, old, ref, adv, mask, 0.2, 0.04),
                               rtol=1e-10)
    no_ref = {k: v for k, v in rows.items() if k != "ref_logp"}
    spec = obj.get_loss("tracerl")
    got = spec.loss(spec.config(), logp, no_ref, num_rollouts=2)[0]
    np.testing.assert_allclose(float(got), naive_tracerl(logp, old, adv, mask, 0.2, 2),
                               rtol=1e-10)
    spec = obj.get_loss("agdo_rl")
    got = spec.loss(spec.config(delta=3.0), logp, no_ref, num_rollouts=2)[0]
    adv_tok = adv[:, None] + np.sign(adv)[:, None] * 3.0 * infl
    np.testing.assert_allclose(
        float(got), _naive_token_adv_trajectory(logp, old, adv_tok, mask, 0.2, 2), rtol=1e-10)
    spec = obj.get_loss("wd1")
    got = spec.loss(spec.config(), logp, rows, group_size=G)[0]
    np.testing.assert_allclose(float(got), naive_wd1(logp, mask, adv, G), rtol=1e-10)
    spec = obj.get_loss("sft")
    got = spec.loss(spec.config(), logp, rows)[0]
    np.testing.assert_allclose(float(got), naive_sft(logp, masked, p_mask, mask), rtol=1e-10)
    spec = obj.get_loss("agdo_sft")
    got = spec.loss(spec.config(gamma=7.0), logp, rows)[0]
    want = np.mean([-((1 + 7.0 * infl[s]) * logp[s] * mask[s]).sum() / mask[s].sum()
                    for s in range(B)])
    np.testing.assert_allclose(float(got), want, rtol=1e-10)


def _rollouts(**kw):
    """Two rollouts of ``[p p | g g g g]`` (P = 2, G = 4); rollout 0 stops at EOS = 1."""
    seqs = jnp.asarray([[5, 6, 8, 1, 2, 2], [5, 7, 8, 9, 10, 11]])
    base = dict(sequences_RL=seqs, attention_mask_RL=jnp.ones((2, 6), jnp.int32),
                prompt_length=2, group_size=2,
                advantages_R=jnp.asarray([0.5, -0.5]), rewards_R=jnp.asarray([1.0, 0.0]),
                key=jax.random.PRNGKey(0), mask_id=63, eos_id=1, budget=2,
                step_map_RG=jnp.asarray([[0, 1, 2, 3], [3, 2, 1, 0]]),
                entropy_RT=jnp.zeros((2, 4)), margin_RT=jnp.zeros((2, 4)),
                roec_RT=jnp.zeros((2, 4)), valid_RT=jnp.ones((2, 4), bool),
                select=obj.get_selector("uniform"),
                influence=lambda: jnp.full((2, 6), 0.25),
                score=lambda inputs, tokens, attention_mask: jnp.full(tokens.shape, -1.0),
                score_ref=None)
    base.update(kw)
    return obj.Rollouts(**base)


def test_registry_rl_rows():
    """The rows each RL entry builds, against hand-worked states."""
    r = _rollouts()
    one = obj.get_loss("wd1").rows(r, obj.get_loss("wd1").config(p_mask_prompt=0.0))
    np.testing.assert_array_equal(np.asarray(one["inputs"]), [[5, 6, 63, 63, 63, 63],
                                                              [5, 7, 63, 63, 63, 63]])
    np.testing.assert_array_equal(np.asarray(one["targets"]), [[0, 0, 1, 1, 0, 0],
                                                               [0, 0, 1, 1, 1, 1]])
    assert "old_logp" not in one  # wd1 is ratio-free
    grpo = obj.get_loss("diffu_grpo").rows(r, obj.get_loss("diffu_grpo").config())
    assert grpo["old_logp"].shape == (2, 6) and "ref_logp" not in grpo
    # TraceRL's uniform grouping of 4 steps into 2 states: steps [0, 2) and [2, 4).
    tr = obj.get_loss("tracerl").rows(r, obj.get_loss("tracerl").config())
    np.testing.assert_array_equal(np.asarray(tr["inputs"]), [
        [5, 6, 63, 63, 63, 63], [5, 6, 8, 1, 63, 63],
        [5, 7, 63, 63, 63, 63], [5, 7, 63, 63, 10, 11]])
    np.testing.assert_array_equal(np.asarray(tr["targets"]), [
        [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(tr["adv"]), [0.5, 0.5, -0.5, -0.5])
    # AGDO-RL: the same split over the order the rollouts were decoded in (their step_map,
    # from the attention-guided max_s rule), with the influence repeated per state.
    ag = obj.get_loss("agdo_rl").rows(r, obj.get_loss("agdo_rl").config())
    np.testing.assert_array_equal(np.asarray(ag["targets"]), np.asarray(tr["targets"]))
    np.testing.assert_array_equal(np.asarray(ag["inputs"]), np.asarray(tr["inputs"]))
    np.testing.assert_array_equal(np.asarray(ag["influence"]), np.full((4, 6), 0.25))
    for rows in (one, grpo, tr, ag):  # every row carries its rollout's attention mask
        assert rows["attention_mask"].shape == rows["inputs"].shape


def test_registry_one_step_rows_never_mask_prompt_padding():
    """d1's prompt mask draws only over real prompt tokens (left padding stays as it is)."""
    r = _rollouts(attention_mask_RL=jnp.asarray([[0, 1, 1, 1, 1, 1], [1] * 6]))
    rows = obj.get_loss("wd1").rows(r, obj.get_loss("wd1").config(p_mask_prompt=1.0))
    np.testing.assert_array_equal(np.asarray(rows["inputs"]), [[5, 63, 63, 63, 63, 63],
                                                               [63, 63, 63, 63, 63, 63]])
    np.testing.assert_array_equal(np.asarray(rows["attention_mask"]), r.attention_mask_RL)


def test_registry_rollout_rules():
    """d1's one-step rows are redrawn at every inner iteration (a fresh prompt mask each);
    AGDO-RL decodes its rollouts with the attention-guided ``max_s`` rule at ``n_per_step``
    tokens per step; the other losses keep the configured sampler."""
    from dllm_jax.errors import ConfigError
    from dllm_jax.sampling import LLaDAConfig

    assert [n for n in obj.loss_names("rl") if obj.get_loss(n).redraw] == ["diffu_grpo", "wd1"]
    spec = obj.get_loss("agdo_rl")
    sampler = spec.rollout_sampler(LLaDAConfig(steps=4, gen_length=8, block_length=8),
                                   spec.config(n_per_step=2))
    assert (sampler.remasking, sampler.cache, sampler.steps) == ("max_s", "none", 4)
    with pytest.raises(ConfigError, match=r"n_per_step \(2\) must be the rollout sampler's"):
        spec.rollout_sampler(LLaDAConfig(steps=8, gen_length=8, block_length=8),
                             spec.config(n_per_step=2))
    assert [n for n in obj.loss_names("rl") if obj.get_loss(n).rollout_sampler] == ["agdo_rl"]


def test_registry_sft_rows():
    tokens = jnp.asarray(np.tile([5, 6, 7, 8, 9, 10], (8, 1)))
    resp = jnp.asarray(np.tile([0, 0, 1, 1, 1, 1], (8, 1)))
    order = jnp.asarray(np.tile([2, 0, 3, 1], (8, 1)))
    batch = obj.SFTBatch(tokens_BL=tokens, response_mask_BL=resp, key=jax.random.PRNGKey(3),
                         mask_id=63, prompt_length=2,
                         attention=lambda n: (order, jnp.zeros((8, 6))))
    plain = obj.get_loss("sft").rows(batch, obj.get_loss("sft").config())
    assert not np.asarray(plain["masked"])[:, :2].any()  # the prompt is never masked
    rows = obj.get_loss("agdo_sft").rows(batch, obj.get_loss("agdo_sft").config())
    inputs, targets = np.asarray(rows["inputs"]), np.asarray(rows["targets"])
    for b in range(8):  # one state per row: step t's token is the target, steps >= t masked
        (i,) = np.flatnonzero(targets[b])
        t = int(order[b, i - 2])
        np.testing.assert_array_equal(inputs[b, 2:] == 63, np.asarray(order[b]) >= t)
        np.testing.assert_array_equal(inputs[b, :2], [5, 6])
