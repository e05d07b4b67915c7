"""Sampling under a training mesh of 8 simulated CPU devices equals single-device sampling.

Every preset (LLaDA ``low_confidence`` and ``random``, Dream ``maskgit_plus`` and ``origin``,
IMH), without and with the block KV cache, on a 2 x 4 mesh that splits the rows over ``data``
and the parameters over ``fsdp`` (2, 4, 1) or over ``tensor`` (2, 1, 4): the sequences and
every integer of the record equal the single-device run's, and its float statistics agree to
1e-5 (only the order of float reductions differs). Six ragged prompts: on (2, 4, 1) they are
padded to eight rows and the padding dropped; on (2, 1, 4) the rows split evenly.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dllm_jax.model import sharding as shd
from dllm_jax.sampling import DreamConfig, IMHConfig, LLaDAConfig, generate

FSDP, TENSOR = (2, 4, 1), (2, 1, 4)
PROMPTS = [[3, 17, 22, 9, 41], [12, 5], [30, 2, 8], [7, 7, 7, 7], [44], [20, 21, 22, 23, 24]]


def _llada(remasking: str, cache: str) -> LLaDAConfig:
    return LLaDAConfig(steps=4, gen_length=8, block_length=4, temperature=1.0,
                       remasking=remasking, cache=cache)


def _dream(alg: str, cache: str) -> DreamConfig:
    return DreamConfig(steps=4, max_new_tokens=8, block_length=4, alg=alg, cache=cache)


# Each cache mode of each family meets both meshes across the presets.
CASES = [
    ("llada", _llada("low_confidence", "none"), FSDP),
    ("llada", _llada("low_confidence", "prefix"), TENSOR),
    ("llada", _llada("low_confidence", "dual"), FSDP),
    ("llada", _llada("random", "none"), TENSOR),
    ("llada", _llada("random", "prefix"), FSDP),
    ("llada", _llada("random", "dual"), TENSOR),
    ("dream", _dream("maskgit_plus", "none"), FSDP),
    ("dream", _dream("maskgit_plus", "prefix"), TENSOR),
    ("dream", _dream("maskgit_plus", "dual"), FSDP),
    ("dream", _dream("origin", "none"), TENSOR),
    ("dream", _dream("origin", "prefix"), FSDP),
    ("dream", _dream("origin", "dual"), TENSOR),
    ("llada", IMHConfig(num_candidates=2, gen_length=8, block_length=4, steps=4), FSDP),
    ("llada", IMHConfig(num_candidates=2, gen_length=8, block_length=4, steps=4), TENSOR),
]


def _id(case) -> str:
    family, cfg, shape = case
    rule = getattr(cfg, "remasking", getattr(cfg, "alg", "imh"))
    cache = getattr(cfg, "cache", "none")
    return f"{family}-{rule}-{cache}-{'fsdp' if shape == FSDP else 'tensor'}"


@pytest.fixture(scope="module")
def models(sharp_llada, sharp_dream):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices; set in conftest.py")
    return {"llada": sharp_llada, "dream": sharp_dream}


def _assert_same(out, ref) -> None:
    np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(ref.sequences))
    fields = type(ref.trajectory)._fields
    for name, a, b in zip(fields, out.trajectory, ref.trajectory, strict=True):
        if b is None:
            assert a is None, name
            continue
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, name
        if np.issubdtype(b.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_sharded_generate_equals_single_device(models, case):
    family, cfg, shape = case
    model = models[family]
    ref = generate(model, PROMPTS, config=cfg, key=5, record=True)
    mesh = shd.make_mesh(shape)
    out = generate(model, PROMPTS, config=cfg, key=5, record=True, mesh=mesh)
    assert out.sequences.sharding.mesh == mesh
    if shape == TENSOR:  # six rows split over data; on FSDP the 6 of 8 rows are replicated
        assert out.sequences.sharding.spec[0] == "data"
    _assert_same(out, ref)
    # The check can fail: another key samples other tokens.
    other = generate(model, PROMPTS, config=cfg, key=6, record=True, mesh=mesh)
    assert not np.array_equal(np.asarray(other.sequences), np.asarray(ref.sequences))


def test_generate_runs_on_the_mesh_of_sharded_parameters(models):
    """A model sharded as trained (FSDP and tensor axes) samples on its own mesh without
    ``mesh=``: its parameters are used where they are (not moved, not gathered) and the rows
    of the result are split over the data axis."""
    mesh = shd.make_mesh(TENSOR)
    model = shd.shard_model(models["llada"], mesh)
    before = shd.param_specs(model)
    assert before["layers.0.self_attn.q_proj.kernel"] == jax.sharding.PartitionSpec(None,
                                                                                    "tensor")
    cfg = CASES[1][1]
    out = generate(model, PROMPTS, config=cfg, key=5, record=True)
    assert out.sequences.sharding.mesh == mesh and out.sequences.sharding.spec[0] == "data"
    assert shd.param_specs(model) == before
    _assert_same(out, generate(models["llada"], PROMPTS, config=cfg, key=5, record=True))


def test_per_row_keys_on_the_mesh(models):
    """One key per row survives the row padding and placement: the sharded run equals the
    single-device run with the same keys (six rows padded to eight on the FSDP mesh)."""
    cfg, seeds = _llada("random", "dual"), [5, 9, 5, 1, 2, 3]
    ref = generate(models["llada"], PROMPTS, config=cfg, key=seeds, record=True)
    out = generate(models["llada"], PROMPTS, config=cfg, key=seeds, record=True,
                   mesh=shd.make_mesh(FSDP))
    _assert_same(out, ref)
