"""Sharded train step equals single-device; optimiser state sharded like the parameters;
gradient accumulation; a tiny SFT run learns; SFT/GRPO losses and grads match across meshes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import tiny_config

from dllm_jax import objectives as obj
from dllm_jax.model import sharding as shd
from dllm_jax.model.transformer import init_model
from dllm_jax.train import OptimConfig, init_state, make_optimizer, make_train_step
from dllm_jax.train import step as st


def _model():
    return init_model(tiny_config("llada", hidden_size=64, num_heads=4, num_kv_heads=2,
                                  head_dim=16, intermediate_size=128), seed=3)


def _batch(n=8, length=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 60, (n, length)).astype(np.int32)
    resp = np.zeros((n, length), np.int32)
    resp[:, 5:] = 1
    return {"tokens": tokens, "response_mask": resp}


def _grpo_objective(model, batch, key):
    tokens = batch["tokens"]
    inp, masked = obj.d1_inputs(key, tokens, 1 - batch["response_mask"], batch["response_mask"],
                                0.15, model.config.mask_token_id)
    logp = obj.token_logprobs(obj.aligned(model, inp), tokens)
    adv = jnp.linspace(-1.0, 1.0, tokens.shape[0])
    return obj.diffu_grpo_loss(logp, jax.lax.stop_gradient(logp) - 0.05, logp - 0.1, adv,
                               batch["response_mask"], eps=0.2, beta=0.04)


@pytest.fixture(scope="module")
def reference():
    model = _model()
    opt = make_optimizer(OptimConfig(lr=1e-2, total_steps=10))
    graphdef = nnx.graphdef(model)
    key = jax.random.PRNGKey(1)
    out = {}
    for name, fn in (("sft", st.sft_objective), ("grpo", _grpo_objective)):
        loss, grads = jax.jit(lambda p, b, k, fn=fn: jax.value_and_grad(
            lambda q: fn(nnx.merge(graphdef, nnx.State(q)), b, k)[0])(p))(
            nnx.to_pure_dict(nnx.state(model)), st.put_batch(_batch(), None), key)
        out[name] = (float(loss), grads)
    # One full step with SGD: AdamW's first update is ~lr * sign(g), which turns 1e-9 gradient
    # noise on near-zero entries into lr-sized differences, so it cannot check 1e-5 equality.
    sgd = optax.sgd(0.5)
    step = make_train_step(graphdef, st.sft_objective, sgd, donate=False)
    new, _ = step(init_state(model, sgd), st.put_batch(_batch(), None), key)
    out["step"] = new["params"]
    return model, opt, out


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_equals_single_device(reference, shape):
    model, opt, ref = reference
    mesh = shd.make_mesh(shape)
    shardings = st.state_shardings(model, opt, mesh)
    state = init_state(model, opt, shardings)
    # Optimiser moments carry exactly their parameters' shardings.
    mu = state["opt"][1][0].mu
    flat_mu = jax.tree.leaves(mu)
    flat_p = jax.tree.leaves(state["params"])
    assert all(m.sharding == p.sharding for m, p in zip(flat_mu, flat_p, strict=True))
    if shape[1] > 1:
        q = state["params"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
        assert "fsdp" in str(q.sharding.spec)
    graphdef = nnx.graphdef(model)
    key = jax.random.PRNGKey(1)
    batch = st.put_batch(_batch(), mesh)
    for name, fn in (("sft", st.sft_objective), ("grpo", _grpo_objective)):
        def lg(p, b, k, fn=fn):
            with shd.use_mesh(mesh):
                return jax.value_and_grad(
                    lambda q: fn(nnx.merge(graphdef, nnx.State(q)), b, k)[0])(p)
        loss, grads = jax.jit(lg)(state["params"], batch, key)
        ref_loss, ref_grads = ref[name]
        np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)
    sgd = optax.sgd(0.5)
    sgd_sh = st.state_shardings(model, sgd, mesh)
    step = make_train_step(graphdef, st.sft_objective, sgd, mesh=mesh, shardings=sgd_sh)
    new, _ = step(init_state(model, sgd, sgd_sh), batch, key)
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(ref["step"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
    assert all(x.sharding == s for x, s in zip(jax.tree.leaves(new),
                                                jax.tree.leaves(sgd_sh), strict=True))


def test_grad_accumulation_equals_full_batch():
    model = _model()
    opt = optax.sgd(0.5)  # linear in the gradient (see the reference fixture)
    graphdef = nnx.graphdef(model)

    def det_loss(m, b, k):  # deterministic: a fixed mask, so micro-batches see the same data
        masked = b["response_mask"].astype(bool)
        logp = obj.score_masked(m, b["tokens"], masked)
        return obj.sft_loss(logp, masked, jnp.ones(b["tokens"].shape[0]), b["response_mask"])

    batch = st.put_batch(_batch(8), None)
    key = jax.random.PRNGKey(0)
    full, _ = make_train_step(graphdef, det_loss, opt, donate=False)(
        init_state(model, opt), batch, key)
    acc, metrics = make_train_step(graphdef, det_loss, opt, grad_accum=4, donate=False)(
        init_state(model, opt), batch, key)
    for a, b in zip(jax.tree.leaves(acc["params"]), jax.tree.leaves(full["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_micro_batches_are_split_over_every_device():
    """Micro-batch ``i`` holds rows ``i * B / n`` onwards, as without a mesh, and every device
    holds its share of every micro-batch (a plain reshape of the row-sharded batch would put
    micro-batch 0 on half of the devices)."""
    from jax.sharding import PartitionSpec as P

    mesh = shd.make_mesh((2, 4, 1))
    rows = st.put_batch({"t": np.arange(32 * 3).reshape(32, 3)}, mesh)["t"]
    micro = jax.jit(lambda x: st.split_micro(x, 2, mesh))(rows)
    np.testing.assert_array_equal(np.asarray(micro), np.arange(96).reshape(2, 16, 3))
    assert micro.sharding.spec == P(None, ("data", "fsdp"))
    assert {s.data.shape for s in micro.addressable_shards} == {(2, 2, 3)}
    # 8 micro-batches of 4 rows cannot split over 8 devices: the plain reshape stays.
    small = jax.jit(lambda x: st.split_micro(x, 8, mesh))(rows)
    np.testing.assert_array_equal(np.asarray(small), np.arange(96).reshape(8, 4, 3))


def test_sharded_grad_accumulation_equals_single_device():
    """The sharded step with micro-batches (random SFT masks keyed by micro-batch) takes the
    single-device step's rows and keys: the same parameters after one SGD step."""
    model = _model()
    sgd = optax.sgd(0.5)  # linear in the gradient (see the reference fixture)
    graphdef = nnx.graphdef(model)
    key = jax.random.PRNGKey(2)
    ref, _ = make_train_step(graphdef, st.sft_objective, sgd, grad_accum=2, donate=False)(
        init_state(model, sgd), st.put_batch(_batch(16), None), key)
    mesh = shd.make_mesh((2, 4, 1))
    sh = st.state_shardings(model, sgd, mesh)
    step = make_train_step(graphdef, st.sft_objective, sgd, grad_accum=2, mesh=mesh,
                           shardings=sh)
    new, _ = step(init_state(model, sgd, sh), st.put_batch(_batch(16), mesh), key)
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(ref["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_fifty_sft_steps_halve_the_loss():
    model = _model()
    opt = make_optimizer(OptimConfig(lr=1e-2, total_steps=50, schedule="constant"))
    step = make_train_step(nnx.graphdef(model), st.sft_objective, opt)
    state = init_state(model, opt)
    batch = st.put_batch(_batch(16, seed=5), None)
    losses = []
    for s in range(50):
        state, m = step(state, batch, jax.random.fold_in(jax.random.PRNGKey(0), s))
        losses.append(float(m["loss"]))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.5 * first, (first, last)


def test_schedule_matches_formula():
    from dllm_jax.train import learning_rate_schedule

    cfg = OptimConfig(lr=2e-3, warmup_steps=10, total_steps=110, end_lr_factor=0.1)
    sched = learning_rate_schedule(cfg)
    for s in (0, 5, 10, 40, 110, 200):
        if s < 10:
            want = 2e-3 * s / 10
        else:
            frac = min((s - 10) / 100, 1.0)
            want = 2e-4 + (2e-3 - 2e-4) * 0.5 * (1 + np.cos(np.pi * frac))
        np.testing.assert_allclose(float(sched(s)), want, rtol=1e-5, atol=1e-9)
    const = learning_rate_schedule(OptimConfig(lr=1e-3, schedule="constant", warmup_steps=4))
    assert float(const(2)) == pytest.approx(5e-4) and float(const(50)) == pytest.approx(1e-3)


def test_bad_configs_and_batches_raise():
    from dllm_jax.train import TrainConfig

    with pytest.raises(ValueError, match="lr"):
        OptimConfig(lr=0.0)
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="linear")
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(batch_size=6, optim=OptimConfig(grad_accum=4))
    with pytest.raises(ValueError, match="mesh"):
        TrainConfig(mesh=(2, 4))
    assert TrainConfig(mesh=[1, 8, 1]).mesh == (1, 8, 1)
    with pytest.raises(ValueError, match="not divisible"):
        st.put_batch(_batch(n=6), shd.make_mesh((1, 4, 2)))


def test_trainer_writes_config_and_refuses_missing_tensorboard(tmp_path):
    import importlib.util

    import yaml

    from dllm_jax.train import TrainConfig, Trainer

    cfg = TrainConfig(seed=7, steps=2, batch_size=8, log_every=1)
    trainer = Trainer(cfg, _model(), st.sft_objective, lambda s: _batch(), tmp_path, mesh=None,
                      extra_config={"note": "x"}, progress=False)
    assert not (tmp_path / "config.yaml").exists()  # written once the run is accepted
    trainer.run()
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["train"]["seed"] == 7 and saved["train"]["optim"]["lr"] == cfg.optim.lr
    assert saved["note"] == "x"
    if importlib.util.find_spec("tensorboardX") is None:
        with pytest.raises(ValueError, match="tensorboardX"):
            Trainer(TrainConfig(steps=2, batch_size=8, tensorboard=True), _model(),
                    st.sft_objective, lambda s: _batch(), tmp_path / "tb", mesh=None)
