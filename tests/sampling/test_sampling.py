"""The compiled sampler's invariants, batching and compilation; the CLI's sampler flags.

Agreement with the original implementations, token for token, is in
tests/sampling/test_sampling_reference.py.
"""

import argparse

import numpy as np
import pytest

from dllm_jax.cli.generate import _decode, add_sampler_arguments, sampler_config_from_args
from dllm_jax.data.batching import completion_until_eos
from dllm_jax.errors import ConfigError
from dllm_jax.sampling import DreamConfig, LLaDAConfig, generate
from dllm_jax.sampling.loop import _sample
from dllm_jax.weights import GENERATION_NAME, save_generation_settings

MASK = 63
PROMPT = np.array([[3, 17, 22, 9, 41], [12, 5, 30, 2, 8]], np.int32)


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


@pytest.mark.parametrize("family", ["llada", "dream", "imh"])
def test_per_row_keys_decode_each_row_as_alone(family, sharp_llada, sharp_dream):
    """One key per row: every row equals ``generate`` of that row alone with its key, whatever
    else is in the batch (a batch key would give rows 0 and 2 different noise)."""
    from dllm_jax.sampling import IMHConfig

    model = sharp_dream if family == "dream" else sharp_llada
    cfg = {"llada": LLaDAConfig(steps=8, gen_length=8, block_length=4, temperature=1.0,
                                remasking="random"),
           "dream": DreamConfig(steps=8, max_new_tokens=8),
           "imh": IMHConfig(gen_length=8, block_length=4, steps=8, num_candidates=3)}[family]
    prompts, seeds = [[7, 8, 9], [1, 2, 3, 4, 5], [7, 8, 9]], [5, 9, 5]
    batch = np.asarray(generate(model, prompts, config=cfg, key=seeds).sequences)
    for row, (p, s) in enumerate(zip(prompts, seeds, strict=True)):
        alone = np.asarray(generate(model, [p], config=cfg, key=s).sequences)[0]
        np.testing.assert_array_equal(batch[row, -len(alone):], alone)
    as_array = np.asarray(generate(model, prompts, config=cfg, key=np.array(seeds)).sequences)
    np.testing.assert_array_equal(as_array, batch)  # an integer array of seeds is the same
    shared = np.asarray(generate(model, prompts, config=cfg, key=5).sequences)
    assert not np.array_equal(shared[0], shared[2])  # so the test can tell the two apart
    with pytest.raises(ValueError, match="2 per-row keys for 3 prompt rows"):
        generate(model, prompts, config=cfg, key=[1, 2])


def test_compiles_once_per_shape_and_config(sharp_llada):
    cfg = LLaDAConfig(steps=4, gen_length=8, block_length=4, temperature=0.5)
    generate(sharp_llada, PROMPT, config=cfg, key=0)
    before = _sample._cache_size()
    rng = np.random.default_rng(0)
    for seed in range(3):
        generate(sharp_llada, rng.integers(0, 60, PROMPT.shape), config=cfg, key=seed)
    assert _sample._cache_size() == before


def test_completion_until_eos():
    assert completion_until_eos(np.array([5, 6, 9, 1, 9, 1, 9]), 1) == [5, 6, 9]
    assert completion_until_eos([1, 4], 1) == []
    assert completion_until_eos([4, 5], 1) == [4, 5]
    assert completion_until_eos([4, 1, 5], None) == [4, 1, 5]
    assert completion_until_eos([4, 1, 5], -1) == [4, 1, 5]


def test_mask_is_never_returned(sharp_llada):
    cfg = LLaDAConfig(steps=4, gen_length=4, block_length=4, logits_eos_inf=True)
    out = np.asarray(generate(sharp_llada, PROMPT, config=cfg, key=0).sequences)
    assert not (out == MASK).any() and not (out[:, 5:] == 1).any()


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_sampler_arguments(parser)
    return parser.parse_args(argv)


def test_cli_sampler_flags(tmp_path):
    cfg = sampler_config_from_args(_args("--confidence-eos-eot-inf", "--eot-token-id", "2",
                                         "--top-k", "0"))
    assert (cfg.confidence_eos_eot_inf, cfg.eot_token_id, cfg.top_k) == (True, 2, 0)
    with pytest.raises(ConfigError, match="--confidence-eos-eot-inf not used by --sampler dream"):
        sampler_config_from_args(_args("--sampler", "dream", "--confidence-eos-eot-inf"))
    # One name for the length: --gen-length, with --max-new-tokens as its alias, every sampler.
    assert sampler_config_from_args(_args("--max-new-tokens", "8", "--steps", "8",
                                          "--block-length", "8")).gen_length == 8
    for flag in ("--gen-length", "--max-new-tokens"):
        cfg = sampler_config_from_args(_args("--sampler", "dream", flag, "6", "--steps", "6"))
        assert (cfg.max_new_tokens, cfg.steps) == (6, 6)
    # Saved generation settings fill the unset length, steps and block (before config.json).
    save_generation_settings(tmp_path, {"gen_length": 4, "steps": 2, "block_length": 4})
    cfg = sampler_config_from_args(_args(), tmp_path)
    assert (cfg.gen_length, cfg.steps, cfg.block_length) == (4, 2, 4)
    cfg = sampler_config_from_args(_args("--sampler", "dream", "--steps", "4"), tmp_path)
    assert (cfg.max_new_tokens, cfg.steps, cfg.block_length) == (4, 4, 4)
    (tmp_path / GENERATION_NAME).write_text('{"gen_length": 0}')
    with pytest.raises(ValueError, match="expected positive integers"):
        sampler_config_from_args(_args(), tmp_path)
    (tmp_path / GENERATION_NAME).unlink()
    # Dream: the checkpoint's config.json first, then the flags.
    (tmp_path / "config.json").write_text('{"top_k": 5, "temperature": 0.0}')
    cfg = sampler_config_from_args(_args("--sampler", "dream", "--temperature", "0.5"), tmp_path)
    assert (cfg.top_k, cfg.temperature) == (5, 0.5)
    cfg = sampler_config_from_args(_args("--sampler", "dream", "--top-k", "0"), tmp_path)
    assert (cfg.top_k, cfg.temperature) == (0, 0.0)
    assert sampler_config_from_args(_args("--sampler", "dream")) == DreamConfig()


class _SkipSpecial:
    """Decodes like an HF tokenizer with ``skip_special_tokens``: EOS is dropped, not a stop."""

    eos = 1

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i) for i in ids if i != self.eos)


def test_cli_text_is_cut_at_eos():
    seqs = np.array([[7, 8, 2, 3, 1, 4, 5]])
    assert _decode(_SkipSpecial(), seqs, 2, 1) == ["cd"]  # not "cdef"
    assert _decode(_SkipSpecial(), seqs, 2, None) == ["cdef"]
    assert _decode(None, seqs, 2, 1) is None


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


@pytest.mark.parametrize("gen_length", [256, 8192, 102_400])
def test_generate_refuses_requests_longer_than_the_model(tiny_llada, gen_length):
    from dllm_jax.errors import ConfigError

    cfg = LLaDAConfig(steps=gen_length // 256, gen_length=gen_length, block_length=256)
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings"):
        generate(tiny_llada, [[3, 4, 5]], config=cfg, key=0)  # 256 positions


def test_generate_refuses_requests_that_cannot_fit_in_memory(tiny_llada):
    from dllm_jax.errors import ConfigError
    from dllm_jax.sampling.budget import check_request, estimate_bytes

    big = tiny_llada.config.replace(max_position_embeddings=1 << 20, vocab_size=1 << 20)
    assert estimate_bytes(big, 64, 1 << 16, 1 << 12, cache=True) > 1 << 40  # over a TiB
    with pytest.raises(ConfigError, match=r"needs about .* GiB .* is free"):
        check_request(big, 64, 1 << 15, 1 << 15, 1 << 12, cache=True)
    check_request(tiny_llada.config, 2, 8, 16, 8)  # a small request passes
