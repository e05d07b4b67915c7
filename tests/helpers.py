"""Tiny configs and models shared by tests, benchmarks and the demo (no network, no files)."""

from __future__ import annotations

from typing import Any

from dllm_jax.model.config import ModelConfig
from dllm_jax.model.transformer import Transformer, init_model

TINY_VOCAB = 64
TINY_MASK_ID = 63


def tiny_config(family: str = "llada", **overrides: Any) -> ModelConfig:
    """A 2-layer, d=32 config of the given family (GQA 4/2 heads, head_dim 8)."""
    base = dict(
        family=family, vocab_size=TINY_VOCAB, hidden_size=32, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, intermediate_size=64, rope_theta=10000.0,
        rms_norm_eps=1e-5, qkv_bias=family in ("dream", "qwen2"),
        max_position_embeddings=256, mask_token_id=TINY_MASK_ID, eos_token_id=1,
        pad_token_id=1, bos_token_id=0)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(family: str = "llada", seed: int = 0, **overrides: Any) -> Transformer:
    """A tiny randomly initialised model; see :func:`tiny_config`."""
    return init_model(tiny_config(family, **overrides), seed=seed)


def sharpened(model: Transformer, factor: float = 5.0, mask_scale: float = 0.02) -> Transformer:
    """Makes a random tiny model's predictions peaked and context-dependent, in place.

    Scales the embedding and LM head by ``factor`` and shrinks the MASK embedding by
    ``mask_scale`` (so a masked position's prediction comes from its context rather than its
    own embedding); argmax decoding then exercises ordering instead of emitting one token.
    """
    emb = model.embed_tokens[...] * factor
    mask_id = model.config.mask_token_id
    if mask_id is not None:
        emb = emb.at[mask_id].multiply(mask_scale)
    model.embed_tokens[...] = emb
    if model.lm_head is not None:
        model.lm_head[...] = model.lm_head[...] * factor
    return model


def numbers_in(x):
    """Every int or float (not bool) inside nested dicts and lists, e.g. a results.json."""
    if isinstance(x, dict):
        for v in x.values():
            yield from numbers_in(v)
    elif isinstance(x, list):
        for v in x:
            yield from numbers_in(v)
    elif isinstance(x, int | float) and not isinstance(x, bool):
        yield x
