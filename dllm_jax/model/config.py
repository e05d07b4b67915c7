"""Model configuration: one frozen dataclass for every supported family, mapped to/from HF configs.

Families:
  * ``llada``  — LLaDA-8B (HF ``model_type: llada``, OLMo-style names, no logit shift).
  * ``dream``  — Dream-v0-7B (HF ``model_type: Dream``, Qwen2 names, q/k/v bias, shifted logits).
  * ``llama``  — plain HF Llama checkpoints, run bidirectionally.
  * ``qwen2``  — plain HF Qwen2 checkpoints (q/k/v bias), run bidirectionally.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from dllm_jax.errors import ConfigError

FAMILIES = ("llada", "dream", "llama", "qwen2")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")

# HF ``model_type`` string -> family.
MODEL_TYPES = {"llada": "llada", "Dream": "dream", "dream": "dream", "llama": "llama",
               "qwen2": "qwen2"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture of a bidirectional masked-diffusion transformer.

    Attributes:
      family: one of ``FAMILIES``; decides key names on import/export and the logit shift.
      vocab_size: rows of the embedding and LM head (LLaDA's ``embedding_size``).
      hidden_size: model width D.
      num_layers: transformer blocks.
      num_heads: query heads H.
      num_kv_heads: key/value heads K (GQA when K < H).
      head_dim: per-head width.
      intermediate_size: SwiGLU hidden width.
      rope_theta: RoPE base.
      rms_norm_eps: RMSNorm epsilon.
      qkv_bias: whether q/k/v projections carry a bias (Dream, Qwen2).
      tie_word_embeddings: LM head shares the embedding matrix.
      max_position_embeddings: longest sequence the checkpoint was trained for.
      mask_token_id: id of the MASK token (None for plain llama/qwen2 checkpoints).
      eos_token_id / pad_token_id / bos_token_id: special ids when known.
      dtype: parameter and matmul dtype; softmax, norms and RoPE always run in float32.
      remat: per-layer rematerialisation policy for training (``none``, ``full``, ``dots``).
      attention_impl: ``xla`` (portable einsum path), ``cudnn`` (fused kernel, GPU), ``auto``.
      hf_extra: JSON of HF config fields that do not change the maths, kept for export.
    """

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    dtype: str = "float32"
    remat: str = "none"
    attention_impl: str = "auto"
    hf_extra: str = "{}"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown family {self.family!r}; expected one of {FAMILIES}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "intermediate_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(
                f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        if self.mask_token_id is not None and not 0 <= self.mask_token_id < self.vocab_size:
            raise ConfigError(
                f"mask_token_id {self.mask_token_id} outside the vocabulary ({self.vocab_size})")

    @property
    def shift_logits(self) -> bool:
        """Dream predicts token i from the hidden state at i-1."""
        return self.family == "dream"

    @property
    def num_params(self) -> int:
        """Parameter count implied by the shapes (embedding and head counted separately)."""
        d, h, k, hd = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * h * hd * 2 + d * k * hd * 2
        if self.qkv_bias:
            attn += h * hd + 2 * k * hd
        mlp = 3 * d * self.intermediate_size
        per_layer = attn + mlp + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * per_layer + d + head

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF mapping
    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], *, source: str = "config.json",
                       **overrides: Any) -> "ModelConfig":
        """Builds a config from an HF ``config.json`` dict.

        Raises:
          ConfigError: one line naming ``source`` and the problem: not a JSON object, a missing
            or malformed field, an unsupported ``model_type``, or a field that changes the maths
            in a way this implementation does not reproduce (rope scaling, sliding window, ...).
        """
        if not isinstance(hf, dict):
            raise ConfigError(f"{source}: expected a JSON object, got a JSON "
                              f"{type(hf).__name__}")
        try:
            return cls._from_hf(hf, source, overrides)
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from None
        except KeyError as e:
            raise ConfigError(f"{source}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError, ZeroDivisionError) as e:
            raise ConfigError(f"{source}: malformed field value ({e})") from None

    @classmethod
    def _from_hf(cls, hf: dict[str, Any], source: str, overrides: dict[str, Any]
                 ) -> "ModelConfig":
        for key in _POSITIVE_INT_FIELDS:
            v = hf.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ConfigError(f"field {key}={v!r} must be a positive integer")
        model_type = hf.get("model_type")
        if not isinstance(model_type, str):
            model_type = repr(model_type)
        if model_type not in MODEL_TYPES:
            raise ConfigError(
                f"{source}: unsupported model_type {model_type!r}; supported: "
                f"{sorted(set(MODEL_TYPES))}")
        family = MODEL_TYPES[model_type]
        _check_math_fields(hf, family, source)
        if family == "llada":
            d = int(hf["d_model"])
            n_heads = int(hf["n_heads"])
            n_kv = hf.get("n_kv_heads") or n_heads
            if hf.get("multi_query_attention"):
                n_kv = 1
            mlp = hf.get("mlp_hidden_size") or hf.get("mlp_ratio", 4) * d
            vocab = int(hf.get("embedding_size") or hf["vocab_size"])
            kw = dict(
                family=family, vocab_size=vocab, hidden_size=d,
                num_layers=int(hf["n_layers"]), num_heads=n_heads, num_kv_heads=int(n_kv),
                head_dim=d // n_heads, intermediate_size=int(mlp),
                rope_theta=float(hf.get("rope_theta", 10000.0)),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
                qkv_bias=bool(hf.get("include_qkv_bias", False)),
                tie_word_embeddings=bool(hf.get("weight_tying", False)),
                max_position_embeddings=int(hf.get("max_sequence_length", 4096)),
                mask_token_id=hf.get("mask_token_id", 126336),
                eos_token_id=hf.get("eos_token_id"), pad_token_id=hf.get("pad_token_id"),
                bos_token_id=hf.get("bos_token_id"),
            )
        else:
            n_heads = int(hf["num_attention_heads"])
            d = int(hf["hidden_size"])
            theta = hf.get("rope_theta")
            if theta is None and isinstance(hf.get("rope_parameters"), dict):
                theta = hf["rope_parameters"].get("rope_theta")
            mask_id = hf.get("mask_token_id")
            if family == "dream" and mask_id is None:
                mask_id = 151666
            kw = dict(
                family=family, vocab_size=int(hf["vocab_size"]), hidden_size=d,
                num_layers=int(hf["num_hidden_layers"]), num_heads=n_heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
                head_dim=int(hf.get("head_dim") or d // n_heads),
                intermediate_size=int(hf["intermediate_size"]),
                rope_theta=float(theta if theta is not None else 10000.0),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                qkv_bias=family in ("dream", "qwen2"),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
                mask_token_id=mask_id, eos_token_id=_first(hf.get("eos_token_id")),
                pad_token_id=hf.get("pad_token_id"), bos_token_id=hf.get("bos_token_id"),
            )
        consumed = _CONSUMED[family]
        extra = {k: v for k, v in hf.items() if k not in consumed}
        kw["hf_extra"] = json.dumps(extra, sort_keys=True)
        kw.update(overrides)
        return cls(**kw)

    def to_hf_config(self) -> dict[str, Any]:
        """Returns a config.json dict in the original family's naming."""
        out: dict[str, Any] = dict(json.loads(self.hf_extra))
        if self.family == "llada":
            out.update(
                model_type="llada", d_model=self.hidden_size, n_layers=self.num_layers,
                n_heads=self.num_heads, n_kv_heads=self.num_kv_heads,
                mlp_hidden_size=self.intermediate_size, vocab_size=self.vocab_size,
                embedding_size=self.vocab_size, rope_theta=self.rope_theta,
                rms_norm_eps=self.rms_norm_eps, include_qkv_bias=self.qkv_bias,
                weight_tying=self.tie_word_embeddings,
                max_sequence_length=self.max_position_embeddings,
                mask_token_id=self.mask_token_id, eos_token_id=self.eos_token_id,
                pad_token_id=self.pad_token_id,
            )
            out.setdefault("architectures", ["LLaDAModelLM"])
            for key, value in _LLADA_REQUIRED.items():
                out.setdefault(key, value)
        else:
            model_type = {"dream": "Dream", "llama": "llama", "qwen2": "qwen2"}[self.family]
            out.update(
                model_type=model_type, hidden_size=self.hidden_size,
                num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
                intermediate_size=self.intermediate_size, vocab_size=self.vocab_size,
                rms_norm_eps=self.rms_norm_eps, tie_word_embeddings=self.tie_word_embeddings,
                max_position_embeddings=self.max_position_embeddings,
                eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
                bos_token_id=self.bos_token_id, hidden_act="silu",
            )
            if "rope_parameters" in out:
                out["rope_parameters"] = dict(out["rope_parameters"], rope_theta=self.rope_theta)
            else:
                out["rope_theta"] = self.rope_theta
            if self.family == "dream":
                out["mask_token_id"] = self.mask_token_id
            if self.family == "llama":
                out.setdefault("attention_bias", False)
                out.setdefault("mlp_bias", False)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields: {unknown}")
        return cls(**d)


_POSITIVE_INT_FIELDS = (
    "d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "embedding_size",
    "hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
    "intermediate_size", "vocab_size", "head_dim")


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list) and x else x


# Fields that change the maths, with the values this implementation reproduces. Anything else
# with a different value is refused rather than silently mis-run.
_LLADA_REQUIRED: dict[str, Any] = {
    "activation_type": "silu", "alibi": False, "attention_layer_norm": False,
    "block_type": "llama", "include_bias": False, "layer_norm_type": "rms",
    "rope": True, "scale_logits": False, "input_emb_norm": False, "block_group_size": 1,
    "bias_for_layer_norm": False, "layer_norm_with_affine": True, "clip_qkv": None,
}
_HF_FORBIDDEN: dict[str, tuple[Any, ...]] = {
    # field: accepted values
    "rope_scaling": (None, {}),
    "mlp_bias": (False,),
    "attention_bias": (False,),
    "pretraining_tp": (1,),
    "hidden_act": ("silu",),
    "partial_rotary_factor": (1, 1.0),
    "use_sliding_window": (False,),
    "attn_logit_softcapping": (None,),
    "final_logit_softcapping": (None,),
}

_CONSUMED = {
    "llada": {"model_type", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size",
              "mlp_ratio", "vocab_size", "embedding_size", "rope_theta", "rms_norm_eps",
              "include_qkv_bias", "weight_tying", "max_sequence_length", "mask_token_id",
              "eos_token_id", "pad_token_id", "bos_token_id", "multi_query_attention"},
}
_CONSUMED["dream"] = _CONSUMED["llama"] = _CONSUMED["qwen2"] = {
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "rope_theta",
    "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings", "mask_token_id",
    "eos_token_id", "pad_token_id", "bos_token_id", "hidden_act",
}


_WHAT = {"rope_scaling": "rope scaling", "mlp_bias": "bias on the MLP projections",
         "attention_bias": "attention bias on o_proj", "pretraining_tp": "tensor-parallel "
         "slicing of the projections", "hidden_act": "a non-SiLU activation",
         "partial_rotary_factor": "partial rotary embeddings",
         "use_sliding_window": "sliding-window attention",
         "attn_logit_softcapping": "attention logit soft-capping",
         "final_logit_softcapping": "final logit soft-capping"}


def _check_math_fields(hf: dict[str, Any], family: str, source: str) -> None:
    if family == "llada":
        for key, want in _LLADA_REQUIRED.items():
            if key in hf and hf[key] != want:
                raise ConfigError(
                    f"{source}: field {key}={hf[key]!r} changes the model's maths and is not "
                    f"supported (supported: {want!r})")
    for key, accepted in _HF_FORBIDDEN.items():
        if key in hf and hf[key] not in accepted and not (family == "llada"
                                                          and key == "hidden_act"):
            raise ConfigError(
                f"{source}: field {key}={hf[key]!r} changes the maths "
                f"({_WHAT.get(key, key)}) and is not supported")
    rope = hf.get("rope_parameters")
    if isinstance(rope, dict) and rope.get("rope_type", "default") != "default":
        raise ConfigError(
            f"{source}: field rope_parameters.rope_type={rope['rope_type']!r} (rope scaling) "
            f"changes the maths and is not supported")
    layer_types = hf.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise ConfigError(
            f"{source}: field layer_types contains sliding-window layers, which are not supported")


# Published shapes, for eval_shape checks and benchmarks (no weights needed).
LLADA_8B = dict(
    family="llada", vocab_size=126464, hidden_size=4096, num_layers=32, num_heads=32,
    num_kv_heads=32, head_dim=128, intermediate_size=12288, rope_theta=500000.0,
    rms_norm_eps=1e-5, max_position_embeddings=4096, mask_token_id=126336,
    eos_token_id=126081, pad_token_id=126081, bos_token_id=126080)
DREAM_7B = dict(
    family="dream", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
    num_kv_heads=4, head_dim=128, intermediate_size=18944, rope_theta=1e6, rms_norm_eps=1e-6,
    qkv_bias=True, max_position_embeddings=131072, mask_token_id=151666,
    eos_token_id=151643, pad_token_id=151643, bos_token_id=151643)


def llada_8b(**overrides: Any) -> ModelConfig:
    return ModelConfig(**{**LLADA_8B, **overrides})


def dream_7b(**overrides: Any) -> ModelConfig:
    return ModelConfig(**{**DREAM_7B, **overrides})
