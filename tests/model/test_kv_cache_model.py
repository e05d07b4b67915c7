"""Model-level block KV cache: exact when nothing changed, bounded drift otherwise."""

import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.data.batching import bucket_for, left_pad


def test_dual_cache_equals_full_forward_when_canvas_unchanged(tiny_dream):
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 60, (2, 12)))
    mask = jnp.ones((2, 12), jnp.int32).at[1, :3].set(0)
    full = np.asarray(tiny_dream(tokens, mask))
    logits, cache = tiny_dream.prefill(tokens, mask)
    np.testing.assert_allclose(np.asarray(logits), full, atol=1e-6, rtol=0)
    assert cache["k"].shape == (2, 2, 12, 2, 8)
    for start in (1, 4, 8):
        blk = tiny_dream.decode_block(tokens, mask, cache, jnp.int32(start), 4, "dual")
        np.testing.assert_allclose(np.asarray(blk), full[:, start:start + 4], atol=1e-5, rtol=0)


def test_prefix_cache_over_block_and_suffix_equals_full_forward_when_unchanged(tiny_dream):
    """Fast-dLLM's prefix cache runs the block and everything after it over the cached prefix:
    with the canvas unchanged since the prefill that equals the full forward's logits there."""
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, 60, (2, 12)))
    mask = jnp.ones((2, 12), jnp.int32).at[1, :2].set(0)
    full = np.asarray(tiny_dream(tokens, mask))
    _, cache = tiny_dream.prefill(tokens, mask)
    for start in (2, 5, 8):
        out = tiny_dream.decode_block(tokens, mask, cache, jnp.int32(start), 12 - start, "prefix")
        np.testing.assert_allclose(np.asarray(out), full[:, start:], atol=1e-5, rtol=0)


def test_prefix_cache_hides_the_suffix():
    from helpers import tiny_model

    # One layer: the cached prefix keys depend on the prefix embeddings only, so the prefix-cache
    # block logits must equal a full forward over prefix + block with the suffix cut off.
    tiny_llada = tiny_model("llada", seed=3, num_layers=1)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 60, (1, 12)))
    logits, cache = tiny_llada.prefill(tokens)
    blk = tiny_llada.decode_block(tokens, None, cache, jnp.int32(4), 4, "prefix")
    # Same as a full forward over the first 8 tokens only (suffix invisible).
    ref = np.asarray(tiny_llada(tokens[:, :8]))[:, 4:8]
    np.testing.assert_allclose(np.asarray(blk), ref, atol=1e-5, rtol=0)


def test_buckets():
    assert bucket_for(1) == 32 and bucket_for(33) == 64
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket_for(10_000)
    ids, mask = left_pad([[5, 6], [7, 8, 9]], pad_id=0, buckets=(4, 8))
    assert ids.tolist() == [[0, 0, 5, 6], [0, 7, 8, 9]]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
