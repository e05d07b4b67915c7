"""Before anything is compiled or allocated: does a request fit the model and the machine?

``check_request`` refuses a prompt plus generation longer than the model's positions, and a
request whose estimated peak memory exceeds what the device (or, on CPU, the host) has free.
The estimate counts what one sampler step holds at once: the KV cache (block cache modes),
the widest layer's activations (queries/keys/values, attention scores, the MLP), and the
block's logits with the float32 copies the token sampler and the statistics make. It is an
estimate for refusing the impossible (a 480 GB allocation), not a profile.
"""

from __future__ import annotations

import os

import jax

from dllm_jax.errors import ConfigError
from dllm_jax.model.config import ModelConfig

GIB = 1024**3


def estimate_bytes(cfg: ModelConfig, rows: int, length: int, block_length: int,
                   cache: bool) -> int:
    """Peak bytes one sampler step needs beyond the parameters (see the module docstring)."""
    act = 2 if cfg.dtype == "bfloat16" else 4
    d, h, k, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    hidden = rows * length * (3 * d + (h + 2 * k) * e + 2 * cfg.intermediate_size) * act
    scores = rows * h * length * length * 4  # the float32 attention probabilities
    kv = cfg.num_layers * rows * length * k * e * 2 * act if cache else 0
    logits = rows * block_length * cfg.vocab_size * 4 * 4  # logits, softmax, noise, scores
    return hidden + scores + kv + logits


def available_bytes() -> int | None:
    """Free memory of the default device (its allocator's limit minus what is in use), or of
    the host for CPU devices; None when unknown."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_request(cfg: ModelConfig, rows: int, prompt_length: int, gen_length: int,
                  block_length: int, *, cache: bool = False, extra: int = 0) -> None:
    """Raises :class:`ConfigError` (one line) when the request cannot run.

    Args:
      rows: sequences decoded at once (batch, times 2 with classifier-free guidance, times K
        candidates for IMH).
      extra: positions the sampler adds beyond prompt and generation (the prefix cache's
        fixed window).
    """
    length = prompt_length + gen_length
    if length > cfg.max_position_embeddings:
        raise ConfigError(
            f"prompt ({prompt_length} tokens) + generation ({gen_length}) = {length} positions "
            f"exceeds the model's max_position_embeddings ({cfg.max_position_embeddings})")
    need = estimate_bytes(cfg, rows, length + extra, block_length, cache)
    free = available_bytes()
    if free is not None and need > free:
        raise ConfigError(
            f"this request needs about {need / GIB:.1f} GiB ({rows} rows x {length} positions) "
            f"but only {free / GIB:.1f} GiB is free; use a smaller batch or generation length")
