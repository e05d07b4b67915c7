"""Sharded equals unsharded: the SFT and diffu-GRPO losses on a tiny model, and their gradients
w.r.t. the parameters, under meshes of 8 simulated CPU devices equal the single-device values.

One jitted function per mesh computes both losses and both gradients (four compilations).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dllm_jax import objectives as obj
from dllm_jax.model import sharding as shd

B, PROMPT, GEN = 8, 4, 8


def _batch(mask_id: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    length = PROMPT + GEN
    tokens = rng.integers(2, 60, (B, length))
    attn = np.ones((B, length), np.int32)
    attn[2, :2] = 0  # a left-padded prompt
    prompt = np.zeros((B, length), bool)
    prompt[:, :PROMPT] = True
    prompt &= attn.astype(bool)
    resp = np.zeros((B, length), bool)
    resp[:, PROMPT:] = True
    tokens[5, PROMPT + 3] = 1  # an EOS: the GRPO mask stops after it
    comp = np.asarray(jnp.zeros((B, length)).at[:, PROMPT:].set(
        obj.completion_mask_until_eos(jnp.asarray(tokens[:, PROMPT:]), 1)))
    old = -rng.uniform(3.0, 5.0, (B, length)).astype(np.float32)
    ref = old + rng.normal(0, 0.2, (B, length)).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    assert mask_id not in tokens
    return {k: jnp.asarray(v) for k, v in dict(
        tokens=tokens, attn=attn, prompt=prompt, resp=resp, comp=comp, old=old, ref=ref,
        adv=adv).items()}


def _losses(model, batch, key):
    mask_id = model.config.mask_token_id
    k_sft, k_d1 = jax.random.split(key)
    noisy, masked, p_mask = obj.forward_mask(k_sft, batch["tokens"], batch["resp"], mask_id)
    logp = obj.token_logprobs(obj.aligned(model, noisy, batch["attn"]), batch["tokens"])
    sft, _ = obj.sft_loss(logp, masked, p_mask, batch["resp"])
    inputs, _ = obj.d1_inputs(k_d1, batch["tokens"], batch["prompt"], batch["resp"], 0.15,
                              mask_id)
    logp = obj.token_logprobs(obj.aligned(model, inputs, batch["attn"]), batch["tokens"])
    grpo, _ = obj.diffu_grpo_loss(logp, batch["old"], batch["ref"], batch["adv"], batch["comp"],
                                  eps=0.2, beta=0.04)
    return sft, grpo


def _step(graphdef, mesh=None, out_shardings=None):
    def run(state, batch, key):
        with shd.use_mesh(mesh):
            sft, g_sft = jax.value_and_grad(
                lambda st: _losses(nnx.merge(graphdef, st), batch, key)[0])(state)
            grpo, g_grpo = jax.value_and_grad(
                lambda st: _losses(nnx.merge(graphdef, st), batch, key)[1])(state)
        return sft, grpo, g_sft, g_grpo

    if out_shardings is None:
        return jax.jit(run)
    return jax.jit(run, out_shardings=out_shardings)


@pytest.fixture(scope="module")
def reference(tiny_dream):
    """Single-device losses and gradients (Dream: the logit shift is on the path)."""
    graphdef, state = nnx.split(tiny_dream)
    batch = _batch(tiny_dream.config.mask_token_id)
    key = jax.random.PRNGKey(11)
    out = jax.device_get(_step(graphdef)(state, batch, key))
    assert np.isfinite(out[0]) and np.isfinite(out[1]) and out[0] > 0
    return tiny_dream, batch, key, out


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_losses_and_grads_match(reference, shape):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices; set in conftest.py")
    model, batch, key, (sft0, grpo0, gs0, gg0) = reference
    mesh = shd.make_mesh(shape)
    sharded = shd.shard_model(model, mesh)
    graphdef, state = nnx.split(sharded)
    state_sh = shd.state_shardings(state, mesh)
    scalar = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    batch_s = jax.device_put(batch, rows)
    fn = _step(graphdef, mesh, out_shardings=(scalar, scalar, state_sh, state_sh))
    sft, grpo, gs, gg = fn(state, batch_s, key)
    # Gradients come back sharded exactly like the parameters (what FSDP updates need).
    for g, s in zip(jax.tree.leaves(gs), jax.tree.leaves(state_sh), strict=True):
        assert g.sharding.is_equivalent_to(s, g.ndim)
    np.testing.assert_allclose(float(sft), sft0, rtol=1e-5)
    np.testing.assert_allclose(float(grpo), grpo0, rtol=1e-5)
    for got, want in ((gs, gs0), (gg, gg0)):
        for a, b in zip(jax.tree.leaves(jax.device_get(got)), jax.tree.leaves(want),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
