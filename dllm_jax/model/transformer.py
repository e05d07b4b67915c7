"""The bidirectional masked-diffusion transformer (LLaDA, Dream, Llama, Qwen2 shapes) in NNX.

Shape legend (used in every name): B batch, L length, D model width, H query heads, K kv heads,
G query heads per kv head, E head dim, F MLP width, V vocabulary.

Parameter and module names mirror HF Llama/Qwen2 names so the converter's table stays short.
Linear kernels are stored ``[in, out]`` (PyTorch stores ``[out, in]``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.model import sharding as shd
from dllm_jax.model.config import ModelConfig

_NEG_INF = -1e30


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype: Any,
           std: float = 0.02) -> nnx.Param:
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=axes)


class Linear(nnx.Module):
    """``y = x @ kernel (+ bias)``, kernel ``[in, out]``, matmul accumulated in float32."""

    def __init__(self, d_in: int, d_out: int, axes: tuple[str | None, str | None], *,
                 bias: bool, dtype: Any, rngs: nnx.Rngs):
        self.kernel = _param(rngs, (d_in, d_out), axes, dtype)
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype), logical_axes=(axes[1],)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        y = jnp.einsum("...i,io->...o", x.astype(kernel.dtype), kernel,
                       preferred_element_type=jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(kernel.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, then cast back and scaled (HF Llama order)."""

    def __init__(self, dim: int, eps: float, dtype: Any):
        self.weight = nnx.Param(jnp.ones((dim,), dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        x32 = x_BLD.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        weight = self.weight[...]
        return weight * x32.astype(weight.dtype)


def rope_tables(positions_BL: jax.Array, head_dim: int, theta: float
                ) -> tuple[jax.Array, jax.Array]:
    """Float32 cos/sin tables ``[B, L, E]`` for non-interleaved (rotate_half) RoPE."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions_BL.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BLNE: jax.Array, cos_BLE: jax.Array, sin_BLE: jax.Array) -> jax.Array:
    x32 = x_BLNE.astype(jnp.float32)
    half = x32.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos_BLE[:, :, None, :] + rotated * sin_BLE[:, :, None, :]
    return out.astype(x_BLNE.dtype)


def attention_probs(q_BLHE: jax.Array, k_BMKE: jax.Array, key_mask_BM: jax.Array) -> jax.Array:
    """Softmax attention probabilities ``[B, K, G, L, M]`` in float32 (the portable path)."""
    b, l, h, e = q_BLHE.shape
    kv = k_BMKE.shape[2]
    q_BLKGE = q_BLHE.reshape(b, l, kv, h // kv, e)
    scores = jnp.einsum("blkge,bmke->bkglm", q_BLKGE, k_BMKE,
                        preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(e))
    scores = jnp.where(key_mask_BM[:, None, None, None, :], scores, _NEG_INF)
    return jax.nn.softmax(scores, axis=-1)


def _xla_attention(q_BLHE, k_BMKE, v_BMKE, key_mask_BM):
    probs = attention_probs(q_BLHE, k_BMKE, key_mask_BM)
    b, l, h, e = q_BLHE.shape
    out = jnp.einsum("bkglm,bmke->blkge", probs.astype(v_BMKE.dtype), v_BMKE,
                     preferred_element_type=jnp.float32)
    return out.reshape(b, l, h, e).astype(q_BLHE.dtype), probs


def _fused_attention(q_BLHE, k_BMKE, v_BMKE, key_mask_BM, impl: str | None):
    # jax.nn.dot_product_attention handles GQA itself; the key-padding mask broadcasts over
    # heads and queries. cuDNN needs bf16/fp16 inputs.
    mask = key_mask_BM[:, None, None, :]
    return jax.nn.dot_product_attention(q_BLHE, k_BMKE, v_BMKE, mask=mask, implementation=impl)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype: Any, rngs: nnx.Rngs):
        d, h, k, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = Linear(d, h * e, ("embed", "heads"), bias=cfg.qkv_bias, dtype=dtype,
                             rngs=rngs)
        self.k_proj = Linear(d, k * e, ("embed", "kv_heads"), bias=cfg.qkv_bias, dtype=dtype,
                             rngs=rngs)
        self.v_proj = Linear(d, k * e, ("embed", "kv_heads"), bias=cfg.qkv_bias, dtype=dtype,
                             rngs=rngs)
        self.o_proj = Linear(h * e, d, ("heads", "embed"), bias=False, dtype=dtype, rngs=rngs)
        self.num_heads, self.num_kv_heads, self.head_dim = h, k, e
        self.impl = cfg.attention_impl

    def qkv(self, x_BLD, cos_BLE, sin_BLE):
        b, l, _ = x_BLD.shape
        q = self.q_proj(x_BLD).reshape(b, l, self.num_heads, self.head_dim)
        k = self.k_proj(x_BLD).reshape(b, l, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x_BLD).reshape(b, l, self.num_kv_heads, self.head_dim)
        q = shd.constrain(apply_rope(q, cos_BLE, sin_BLE), ("batch", "length", "act_heads", None))
        k = shd.constrain(apply_rope(k, cos_BLE, sin_BLE), ("batch", "length", "act_heads", None))
        v = shd.constrain(v, ("batch", "length", "act_heads", None))
        return q, k, v

    def attend(self, q_BLHE, k_BMKE, v_BMKE, key_mask_BM, *, need_probs: bool):
        impl = _resolve_impl(self.impl, q_BLHE.dtype)
        if need_probs or impl == "xla":
            out, probs = _xla_attention(q_BLHE, k_BMKE, v_BMKE, key_mask_BM)
        else:
            out, probs = _fused_attention(q_BLHE, k_BMKE, v_BMKE, key_mask_BM, impl), None
        b, l = out.shape[:2]
        return self.o_proj(out.reshape(b, l, -1)), probs

    def __call__(self, x_BLD, cos_BLE, sin_BLE, key_mask_BL, *, need_probs: bool = False):
        q, k, v = self.qkv(x_BLD, cos_BLE, sin_BLE)
        return self.attend(q, k, v, key_mask_BL, need_probs=need_probs)


def _resolve_impl(impl: str, dtype: Any) -> str:
    if impl == "auto":
        on_gpu = jax.default_backend() == "gpu"
        return "cudnn" if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
    return impl


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype: Any, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(d, f, ("embed", "mlp"), bias=False, dtype=dtype, rngs=rngs)
        self.up_proj = Linear(d, f, ("embed", "mlp"), bias=False, dtype=dtype, rngs=rngs)
        self.down_proj = Linear(f, d, ("mlp", "embed"), bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x_BLD):
        h_BLF = jax.nn.silu(self.gate_proj(x_BLD)) * self.up_proj(x_BLD)
        h_BLF = shd.constrain(h_BLF, ("batch", "length", "act_mlp"))
        return self.down_proj(h_BLF)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype: Any, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = Attention(cfg, dtype, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = MLP(cfg, dtype, rngs)

    def __call__(self, x_BLD, cos_BLE, sin_BLE, key_mask_BL, *, need_probs: bool = False):
        attn, probs = self.self_attn(self.input_layernorm(x_BLD), cos_BLE, sin_BLE, key_mask_BL,
                                     need_probs=need_probs)
        x_BLD = x_BLD + attn
        x_BLD = x_BLD + self.mlp(self.post_attention_layernorm(x_BLD))
        return shd.constrain(x_BLD, ("batch", "length", "act_embed")), probs

    def kv(self, x_BLD, cos_BLE, sin_BLE):
        """Keys and values of this layer for caching (after RoPE)."""
        _, k, v = self.self_attn.qkv(self.input_layernorm(x_BLD), cos_BLE, sin_BLE)
        return k, v

    def cached(self, x_BND, cos_BNE, sin_BNE, k_BLKE, v_BLKE, start, key_mask_BL):
        """Runs N block positions against cached keys/values of the whole sequence.

        The block's fresh keys/values replace the cache at ``start``; ``key_mask_BL`` decides
        which cached positions are visible (prefix only, or prefix and suffix).
        """
        h = self.input_layernorm(x_BND)
        q, k_new, v_new = self.self_attn.qkv(h, cos_BNE, sin_BNE)
        k = jax.lax.dynamic_update_slice_in_dim(k_BLKE, k_new.astype(k_BLKE.dtype), start, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(v_BLKE, v_new.astype(v_BLKE.dtype), start, axis=1)
        k = shd.constrain(k, ("batch", "length", "act_heads", None))
        v = shd.constrain(v, ("batch", "length", "act_heads", None))
        attn, _ = self.self_attn.attend(q, k, v, key_mask_BL, need_probs=False)
        x_BND = x_BND + attn
        return x_BND + self.mlp(self.post_attention_layernorm(x_BND))


class Transformer(nnx.Module):
    """Bidirectional decoder-only transformer.

    Every method returns logits *aligned* so that position ``i`` predicts token ``i``: for
    Dream (``config.shift_logits``) the hidden state at ``i - 1`` predicts token ``i`` and
    position 0 keeps its own; that shift is applied in :meth:`_aligned_head` and nowhere else
    (see docs/model.md, "Logit alignment").
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = _dtype(config.dtype)
        d, v = config.hidden_size, config.vocab_size
        self.embed_tokens = nnx.Param(
            (0.02 * jax.random.normal(rngs.params(), (v, d), jnp.float32)).astype(dtype),
            logical_axes=("vocab", "embed"))
        self.layers = nnx.List([Block(config, dtype, rngs) for _ in range(config.num_layers)])
        self.norm = RMSNorm(d, config.rms_norm_eps, dtype)
        self.lm_head = (None if config.tie_word_embeddings
                        else _param(rngs, (d, v), ("embed", "vocab"), dtype))

    @property
    def shift(self) -> int:
        """1 when the hidden state at ``i - 1`` predicts token ``i`` (Dream), else 0."""
        return 1 if self.config.shift_logits else 0

    def embed(self, tokens_BL: jax.Array) -> jax.Array:
        table = self.embed_tokens[...]
        return shd.constrain(jnp.take(table, tokens_BL, axis=0), ("batch", "length", "act_embed"))

    def head(self, h_BLD: jax.Array) -> jax.Array:
        """Raw LM-head logits of final hidden states (no alignment)."""
        h_BLD = self.norm(h_BLD)
        if self.lm_head is None:
            kernel = self.embed_tokens[...].T
        else:
            kernel = self.lm_head[...]
        logits = jnp.einsum("bld,dv->blv", h_BLD, kernel, preferred_element_type=jnp.float32)
        return shd.constrain(logits.astype(kernel.dtype), ("batch", "length", "act_vocab"))

    def _aligned_head(self, h_BLD: jax.Array, window: tuple[Any, int] | None) -> jax.Array:
        """Aligned logits of all positions, or of ``window = (start, n)`` only.

        With a shift, the window's logits come from hidden states ``start - 1 .. start + n - 2``
        (at ``start = 0``, position 0 keeps its own logits, as in the full sequence).
        """
        s, length = self.shift, h_BLD.shape[1]
        if window is None or window[1] + s > length:
            logits = self.head(h_BLD)
            if s:
                logits = jnp.concatenate([logits[:, :1], logits[:, :-1]], axis=1)
            if window is None:
                return logits
            return jax.lax.dynamic_slice_in_dim(logits, window[0], window[1], axis=1)
        start, n = window
        if not s:
            return self.head(jax.lax.dynamic_slice_in_dim(h_BLD, start, n, axis=1))
        first = jnp.maximum(start - s, 0)
        raw = self.head(jax.lax.dynamic_slice_in_dim(h_BLD, first, n + s, axis=1))
        at_zero = jnp.concatenate([raw[:, :1], raw[:, :n - 1]], axis=1)
        return jnp.where(start >= s, raw[:, :n], at_zero)

    def _setup(self, tokens_BL: jax.Array, attention_mask: jax.Array | None,
               positions_BL: jax.Array | None = None):
        """Key mask ``[B, L]`` (bool) and RoPE tables for one call (default positions:
        ``cumsum(mask) - 1``, Dream's rule, so left padding does not move a row's positions)."""
        b, l = tokens_BL.shape
        mask_BL = (jnp.ones((b, l), jnp.bool_) if attention_mask is None
                   else attention_mask.astype(jnp.bool_))
        if positions_BL is None:
            positions_BL = positions_from_mask(mask_BL)
        cos, sin = rope_tables(positions_BL, self.config.head_dim, self.config.rope_theta)
        return mask_BL, cos, sin

    def _body(self, tokens_BL, mask_BL, cos, sin, *, last_probs: bool = False):
        """Hidden states after every block (and the last layer's attention probabilities)."""
        x = self.embed(tokens_BL)
        last = len(self.layers) - 1
        probs = None
        for i, layer in enumerate(self.layers):
            need = last_probs and i == last
            if self.config.remat != "none" and not need:
                x, _ = _remat_block(self.config.remat)(layer, x, cos, sin, mask_BL)
            else:
                x, probs_i = layer(x, cos, sin, mask_BL, need_probs=need)
                if need:
                    probs = probs_i
        return x, probs

    def __call__(self, tokens_BL: jax.Array, attention_mask: jax.Array | None = None, *,
                 positions_BL: jax.Array | None = None,
                 window: tuple[Any, int] | None = None) -> jax.Array:
        """Aligned logits ``[B, L, V]`` (or ``[B, n, V]`` of ``window``).

        Args:
          tokens_BL: int token ids.
          attention_mask: ``[B, L]`` 1 for real tokens, 0 for padding; padded keys never receive
            attention. Default: all real.
          positions_BL: RoPE positions; default ``cumsum(mask) - 1``.
          window: ``(start, n)`` with a static ``n``: only the logits of positions
            ``start .. start + n - 1`` (samplers need one block; the LM head over the whole
            sequence would dominate the cost for a large vocabulary).
        """
        mask_BL, cos, sin = self._setup(tokens_BL, attention_mask, positions_BL)
        x, _ = self._body(tokens_BL, mask_BL, cos, sin)
        return self._aligned_head(x, window)

    def with_attention(self, tokens_BL: jax.Array, attention_mask: jax.Array | None = None, *,
                       keys_BL: jax.Array | None = None, attn_mean: bool = False,
                       window: tuple[Any, int] | None = None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Aligned logits and AGDO's statistics of the last layer's attention.

        Returns:
          ``(logits, aux)``: ``aux["I"]`` ``[B, L]`` (attention each key receives, averaged over
          real queries); with ``keys_BL`` (a 0/1 indicator of the key set ``U``) ``aux["S"]``
          ``[B, L]`` (mass each query sends to ``U``); with ``attn_mean`` the head-averaged
          attention ``[B, L, L]``. See docs/objectives.md, "AGDO".
        """
        mask_BL, cos, sin = self._setup(tokens_BL, attention_mask)
        x, probs = self._body(tokens_BL, mask_BL, cos, sin, last_probs=True)
        aux = attention_statistics(probs, mask_BL, keys_BL, attn_mean)
        return self._aligned_head(x, window), aux

    # ------------------------------------------------------------------ block KV cache
    def prefill(self, tokens_BL: jax.Array, attention_mask: jax.Array | None = None,
                window: tuple[Any, int] | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Full forward that also returns every layer's keys/values.

        Returns:
          aligned logits (of the ``window``, as in ``__call__``) and a cache ``{"k", "v"}`` of
          shape ``[layers, B, L, K, E]``.
        """
        mask_BL, cos, sin = self._setup(tokens_BL, attention_mask)
        x = self.embed(tokens_BL)
        ks, vs = [], []
        for layer in self.layers:
            k, v = layer.kv(x, cos, sin)
            ks.append(k)
            vs.append(v)
            x, _ = layer(x, cos, sin, mask_BL)
        cache_axes = (None, "batch", "length", "act_heads", None)  # sharded like k and v
        return self._aligned_head(x, window), {"k": shd.constrain(jnp.stack(ks), cache_axes),
                                               "v": shd.constrain(jnp.stack(vs), cache_axes)}

    def decode_block(self, tokens_BL: jax.Array, attention_mask: jax.Array | None,
                     cache: dict[str, jax.Array], start: jax.Array, length: int,
                     mode: str = "dual") -> jax.Array:
        """Aligned logits ``[B, length, V]`` of positions ``start .. start + length - 1``.

        The query window (those positions, and with a shift the one before) is recomputed in
        every layer and attends to itself and to the cached keys/values of the rest of the
        sequence: the prefix before the window (``mode="prefix"``) or everything outside it
        (``mode="dual"``). The cache is approximate for a bidirectional model: it was computed
        when the block was still masked (see docs/sampling.md, "KV cache"). ``start`` must be
        at least ``self.shift``.
        """
        if mode not in ("prefix", "dual"):
            raise ValueError(f"mode must be 'prefix' or 'dual', got {mode!r}")
        mask_BL, cos, sin = self._setup(tokens_BL, attention_mask)
        l = tokens_BL.shape[1]
        first, size = start - self.shift, length + self.shift
        pos = jnp.arange(l)
        in_window = (pos >= first) & (pos < first + size)
        visible = (pos < first) if mode == "prefix" else ~in_window
        key_mask = mask_BL & (visible | in_window)[None, :]
        take = functools.partial(jax.lax.dynamic_slice_in_dim, start_index=first,
                                 slice_size=size, axis=1)
        x = self.embed(take(tokens_BL))
        cos_w, sin_w = take(cos), take(sin)
        for i, layer in enumerate(self.layers):
            x = layer.cached(x, cos_w, sin_w, cache["k"][i], cache["v"][i], first, key_mask)
        return self.head(x)[:, :length]


def attention_statistics(probs_BKGLM: jax.Array, mask_BL: jax.Array,
                         keys_BL: jax.Array | None, attn_mean: bool) -> dict[str, jax.Array]:
    """AGDO statistics from one layer's probabilities (head mean taken here, nowhere else)."""
    attn_BLM = jnp.mean(probs_BKGLM, axis=(1, 2))
    qmask = mask_BL.astype(jnp.float32)
    n_B = jnp.maximum(qmask.sum(-1), 1.0)
    aux = {"I": jnp.einsum("blm,bl->bm", attn_BLM, qmask) / n_B[:, None]}
    if keys_BL is not None:
        aux["S"] = jnp.einsum("blm,bm->bl", attn_BLM, keys_BL.astype(jnp.float32))
    if attn_mean:
        aux["attn_mean"] = attn_BLM
    return aux


@functools.cache
def _remat_block(policy: str):
    pol = None
    if policy == "dots":
        pol = jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims

    def run(layer, x, cos, sin, mask):
        return layer(x, cos, sin, mask)

    return nnx.remat(run, policy=pol)


def positions_from_mask(mask_BL: jax.Array) -> jax.Array:
    """``cumsum(mask) - 1`` clipped at 0: real tokens get 0, 1, 2, ... after any left padding."""
    return jnp.maximum(jnp.cumsum(mask_BL.astype(jnp.int32), axis=-1) - 1, 0)


def init_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised model (normal(0.02) weights, unit norms)."""
    return Transformer(config, rngs=nnx.Rngs(params=seed))


@nnx.jit
def _denoise_step(model: Transformer, tokens_BL: jax.Array, attention_mask: jax.Array
                  ) -> jax.Array:
    return model(tokens_BL, attention_mask).astype(jnp.float32)


def denoise_step(model: Transformer, tokens_BL: jax.Array,
                 attention_mask: jax.Array | None = None) -> jax.Array:
    """Float32 logits aligned so that position i predicts token i (Dream's shift applied).

    Jitted; this is the single call every sampler, scorer and loss makes into the network.
    """
    if attention_mask is None:
        attention_mask = jnp.ones(tokens_BL.shape, jnp.bool_)
    return _denoise_step(model, jnp.asarray(tokens_BL), jnp.asarray(attention_mask))
