"""Forward under several meshes of 8 simulated CPU devices equals the single-device forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import init_model, tiny_config
from jax.sharding import PartitionSpec as P

from dllm_jax.model import sharding as shd
from dllm_jax.model.config import dream_7b, llada_8b
from dllm_jax.model.transformer import Transformer


@pytest.fixture(scope="module")
def model_and_ref():
    model = init_model(tiny_config("qwen2", hidden_size=64, num_heads=4, num_kv_heads=2,
                                   head_dim=16, intermediate_size=128), seed=4)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 60, size=(8, 12)))
    mask = np.ones((8, 12), np.int32)
    mask[3, :4] = 0
    mask = jnp.asarray(mask)
    ref = np.asarray(jax.jit(lambda t, m: model(t, m))(tokens, mask))
    return model, tokens, mask, ref


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_forward_matches(model_and_ref, shape):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices; set in conftest.py")
    model, tokens, mask, ref = model_and_ref
    mesh = shd.make_mesh(shape)
    sharded = shd.shard_model(model, mesh)
    specs = shd.param_specs(sharded)
    fsdp = "fsdp" if shape[1] > 1 else None
    tensor = "tensor" if shape[2] > 1 else None
    assert specs["layers.0.self_attn.q_proj.kernel"] == P(fsdp, tensor)
    assert specs["layers.0.mlp.down_proj.kernel"] == P(tensor, fsdp)
    assert specs["embed_tokens"] == P(tensor, fsdp)
    assert specs["layers.1.input_layernorm.weight"] == P(None)
    q = nnx.state(sharded, nnx.Param)["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
    n_shards = len({str(s.index) for s in q.addressable_shards})
    assert n_shards == shape[1] * shape[2]

    batch = jax.sharding.NamedSharding(mesh, P(("data", "fsdp")))
    tokens_s, mask_s = jax.device_put(tokens, batch), jax.device_put(mask, batch)

    @jax.jit
    def fwd(m, t, a):
        with shd.use_mesh(mesh):
            return m(t, a)

    out = fwd(sharded, tokens_s, mask_s)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


def test_rules_reject_collisions_and_unknown_axes():
    with pytest.raises(ValueError, match="unknown mesh axis"):
        shd.ShardingRules(vocab="model")
    with pytest.raises(ValueError, match="twice"):
        shd.ShardingRules(vocab="tensor", embed="tensor").spec(("vocab", "embed"))
    with pytest.raises(ValueError, match="needs 6 devices"):
        shd.make_mesh((2, 3, 1), devices=jax.devices()[:4])


@pytest.mark.parametrize("make,expected,rel", [(llada_8b, 8.02e9, 0.005), (dream_7b, 7.6e9, 0.01)])
def test_full_size_parameter_counts(make, expected, rel):
    cfg = make(dtype="bfloat16")
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    count = sum(int(np.prod(x.shape)) for x in leaves)
    assert count == cfg.num_params
    assert abs(count - expected) / expected < rel, count
    assert all(x.dtype == jnp.bfloat16 for x in leaves)
    graphdef, state = nnx.split(abstract)
    out = jax.eval_shape(lambda st, t: nnx.merge(graphdef, st)(t), state,
                         jax.ShapeDtypeStruct((1, 16), jnp.int32))
    assert out.shape == (1, 16, cfg.vocab_size)


@pytest.mark.parametrize("source", ["hf", "orbax"])
def test_from_pretrained_restores_onto_mesh(model_and_ref, tmp_path, source):
    import dllm_jax
    from dllm_jax import weights

    model, tokens, mask, ref = model_and_ref
    if source == "hf":
        path = weights.export_hf(model, tmp_path / "hf")
    else:
        path = weights.save_checkpoint(model, tmp_path / "ckpt")
    mesh = shd.make_mesh((2, 2, 2))
    loaded = dllm_jax.from_pretrained(path, mesh=mesh)
    specs = shd.param_specs(loaded)
    assert specs["layers.0.mlp.gate_proj.kernel"] == P("fsdp", "tensor")
    out = jax.jit(lambda m, t, a: m(t, a))(loaded, tokens, mask)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)
