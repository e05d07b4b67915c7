"""LoRA: zero-init adapters reproduce the base; adapter gradients equal the chain rule through
the merged kernel; training moves only the adapters; optimiser state is adapter-sized; a sharded
LoRA step equals the single-device one."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import sharpened, tiny_model

from dllm_jax import objectives as obj
from dllm_jax.model import sharding as shd
from dllm_jax.train import CheckpointConfig, OptimConfig, TrainConfig, Trainer, lora
from dllm_jax.train import step as st

CFG = lora.LoRAConfig(rank=4, alpha=8.0)


def _batch(n=8, length=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 60, (n, length)).astype(np.int32)
    resp = np.zeros((n, length), np.int32)
    resp[:, 5:] = 1
    return {"tokens": tokens, "response_mask": resp}


def _det_loss(model, batch, key):  # fixed mask: deterministic in the parameters
    masked = batch["response_mask"].astype(bool)
    logp = obj.score_masked(model, batch["tokens"], masked)
    return obj.sft_loss(logp, masked, jnp.ones(batch["tokens"].shape[0]), batch["response_mask"])


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llada", seed=0)
    base = nnx.to_pure_dict(nnx.state(model))
    adapters = lora.init_lora(base, CFG, jax.random.PRNGKey(0))
    return model, base, adapters


def test_config_validation():
    with pytest.raises(ValueError, match="targets"):
        lora.LoRAConfig(rank=2, targets=("qproj",))
    with pytest.raises(ValueError, match="rank"):
        lora.LoRAConfig(rank=-1)
    assert not lora.LoRAConfig().enabled


def test_zero_b_is_the_base_model(setup):
    model, base, adapters = setup
    n_mod = 7 * model.config.num_layers
    assert len(jax.tree.leaves(adapters)) == 2 * n_mod
    merged = lora.merge(base, adapters, CFG)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(base), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    q = adapters["layers"][0]["self_attn"]["q_proj"]
    assert q["a"].shape == (32, 4) and q["b"].shape == (4, 32)


def test_adapter_grads_follow_the_chain_rule(setup):
    model, base, adapters = setup
    graphdef = nnx.graphdef(model)
    # Non-zero B so that both dA and dB are non-trivial.
    adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(
        jax.random.PRNGKey(x.size), x.shape), adapters)
    batch = st.put_batch(_batch(), None)

    def loss_of_model_params(p):
        return _det_loss(nnx.merge(graphdef, nnx.State(p)), batch, None)[0]

    fn = lora.params_fn(CFG)
    g_train = jax.jit(jax.grad(lambda tp: loss_of_model_params(fn(tp))))(
        {"base": base, "lora": adapters})
    merged = lora.merge(base, adapters, CFG)
    g_full = jax.jit(jax.grad(loss_of_model_params))(merged)
    # The base is frozen: its gradient is exactly zero.
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_train["base"]))
    for layer in range(model.config.num_layers):
        for group, name in (("self_attn", "q_proj"), ("self_attn", "o_proj"),
                            ("mlp", "down_proj")):
            ab = adapters["layers"][layer][group][name]
            dw = np.asarray(g_full["layers"][layer][group][name]["kernel"], np.float64)
            a, b = np.asarray(ab["a"], np.float64), np.asarray(ab["b"], np.float64)
            got = g_train["lora"]["layers"][layer][group][name]
            np.testing.assert_allclose(got["a"], CFG.scale * dw @ b.T, atol=1e-6, rtol=1e-4)
            np.testing.assert_allclose(got["b"], CFG.scale * a.T @ dw, atol=1e-6, rtol=1e-4)


def test_trainer_moves_only_adapters(tmp_path):
    # A random tiny model's LM head is too weak to fit anything while frozen; sharpen it.
    model = sharpened(tiny_model("llada", seed=0), 10.0)
    base = nnx.to_pure_dict(nnx.state(model))
    cfg = TrainConfig(steps=30, batch_size=8, mesh=(2, 2, 2), log_every=1,
                      optim=OptimConfig(lr=3e-2, total_steps=30, schedule="constant"),
                      checkpoint=CheckpointConfig(every=30), lora=CFG)
    fixed = _batch(seed=4)
    trainer = Trainer(cfg, model, _det_loss, lambda s: fixed, tmp_path, progress=False)
    state = trainer.state
    # Moments exist for the adapters only.
    n_adapter = lora.num_adapter_params(state["params"]["lora"])
    n_opt = sum(math.prod(x.shape) for x in jax.tree.leaves(state["opt"]))
    assert 2 * n_adapter <= n_opt <= 2 * n_adapter + 16
    # A is sharded like its kernel's rows, B like its columns.
    ksh = state["params"]["base"]["layers"][0]["mlp"]["gate_proj"]["kernel"].sharding.spec
    ab = state["params"]["lora"]["layers"][0]["mlp"]["gate_proj"]
    assert ab["a"].sharding.spec[0] == ksh[0] and ab["b"].sharding.spec[1] == ksh[1]
    first = float(_det_loss(trainer.model, st.put_batch(fixed, None), None)[0])
    trainer.run()
    last = float(_det_loss(trainer.model, st.put_batch(fixed, None), None)[0])
    assert last < 0.8 * first, (first, last)
    for a, b in zip(jax.tree.leaves(trainer.state["params"]["base"]), jax.tree.leaves(base),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_lora_step_equals_single_device(setup):
    model, base, _ = setup
    graphdef = nnx.graphdef(model)
    params = lora.train_params(base, CFG, jax.random.PRNGKey(1))
    params["lora"] = jax.tree.map(lambda x: x + 0.05, params["lora"])
    opt = lora.masked_optimizer(optax.sgd(0.5), params)
    fn = lora.params_fn(CFG)
    key = jax.random.PRNGKey(2)
    one = st.make_train_step(graphdef, st.sft_objective, opt, donate=False, params_fn=fn)
    ref, _ = one(st.init_state(model, opt, params=params), st.put_batch(_batch(), None), key)
    mesh = shd.make_mesh((2, 2, 2))
    p_sh = lora.shardings(st.param_shardings(model, mesh), base, CFG)
    sh = st.state_shardings(model, opt, mesh, params=params, params_shardings=p_sh)
    many = st.make_train_step(graphdef, st.sft_objective, opt, mesh=mesh, shardings=sh,
                              params_fn=fn)
    new, _ = many(st.init_state(model, opt, sh, params=params), st.put_batch(_batch(), mesh),
                  key)
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(ref["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
