"""Parameter names: the table mapping each NNX parameter to its HF key, per family.

LLaDA uses its own (OLMo-style) names; Dream, Llama and Qwen2 use the Qwen2/Llama names. Linear
kernels are stored ``[in, out]`` here and ``[out, in]`` in PyTorch, hence the transpose flag.
"""

from __future__ import annotations

import re
from typing import Any

from flax import nnx

from dllm_jax.model.config import ModelConfig
from dllm_jax.model.transformer import Transformer

# (NNX parameter path regex, HF key template, transpose?) per naming scheme. ``{i}`` is a layer.
_QWEN_NAMES = [
    (r"embed_tokens", "model.embed_tokens.weight", False),
    (r"layers\.(\d+)\.input_layernorm\.weight", "model.layers.{i}.input_layernorm.weight", False),
    (r"layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.kernel",
     "model.layers.{i}.self_attn.{p}_proj.weight", True),
    (r"layers\.(\d+)\.self_attn\.(q|k|v)_proj\.bias", "model.layers.{i}.self_attn.{p}_proj.bias",
     False),
    (r"layers\.(\d+)\.post_attention_layernorm\.weight",
     "model.layers.{i}.post_attention_layernorm.weight", False),
    (r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.kernel", "model.layers.{i}.mlp.{p}_proj.weight",
     True),
    (r"norm\.weight", "model.norm.weight", False),
    (r"lm_head", "lm_head.weight", True),
]
_LLADA_PROJ = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
               "gate": "ff_proj", "up": "up_proj", "down": "ff_out"}
_LLADA_NAMES = [
    (r"embed_tokens", "model.transformer.wte.weight", False),
    (r"layers\.(\d+)\.input_layernorm\.weight", "model.transformer.blocks.{i}.attn_norm.weight",
     False),
    (r"layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.kernel",
     "model.transformer.blocks.{i}.{P}.weight", True),
    (r"layers\.(\d+)\.self_attn\.(q|k|v)_proj\.bias", "model.transformer.blocks.{i}.{P}.bias",
     False),
    (r"layers\.(\d+)\.post_attention_layernorm\.weight",
     "model.transformer.blocks.{i}.ff_norm.weight", False),
    (r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.kernel", "model.transformer.blocks.{i}.{P}.weight",
     True),
    (r"norm\.weight", "model.transformer.ln_f.weight", False),
    (r"lm_head", "model.transformer.ff_out.weight", True),
]
KEY_TABLES = {"llada": _LLADA_NAMES, "dream": _QWEN_NAMES, "llama": _QWEN_NAMES,
              "qwen2": _QWEN_NAMES}


def hf_key(family: str, path: str) -> tuple[str, bool]:
    """Maps a dotted NNX parameter path to ``(HF key, transpose)`` for the family."""
    for pattern, template, transpose in KEY_TABLES[family]:
        m = re.fullmatch(pattern, path)
        if m:
            groups = m.groups()
            layer = groups[0] if groups else ""
            proj = groups[1] if len(groups) > 1 else ""
            return template.format(i=layer, p=proj, P=_LLADA_PROJ.get(proj, "")), transpose
    raise KeyError(f"no HF name for parameter {path!r} in family {family!r}")


def abstract_state(config: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph and shape-only parameter state, without allocating weights."""
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)


def flat_paths(state: nnx.State) -> list[tuple[tuple[Any, ...], str]]:
    return [(path, ".".join(map(str, path))) for path, _ in nnx.to_flat_state(state)]
