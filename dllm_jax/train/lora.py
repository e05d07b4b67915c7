"""LoRA: low-rank adapters on the attention and MLP projections, with the base model frozen.

For each targeted ``Linear`` kernel ``W [in, out]`` the adapter is ``A [in, r]``, ``B [r, out]``
and the effective kernel is ``W + (alpha / r) A B`` (``B`` starts at zero, so step 0 is the base
model). The train state's parameters become ``{"base": <model params>, "lora": <adapters>}``;
the base enters the loss through ``stop_gradient`` and the optimiser is an
``optax.multi_transform`` that updates only ``lora`` (the base's label maps to
``set_to_zero``), so AdamW moments exist only for the adapters. Adapters are kept in float32
and sharded like their kernel's rows (``A``) and columns (``B``).

Memory: the base parameters stay resident (bf16: 2 bytes each) but need no gradient buffer
and no moments; the merged kernel of each layer is a transient.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """Adapters of rank ``rank`` on the ``targets`` projections, scaled by ``alpha / rank``.

    ``rank: 0`` (the default) turns LoRA off: full fine-tuning.
    """

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0 (0 = off), got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        object.__setattr__(self, "targets", tuple(self.targets))
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown or not self.targets:
            raise ValueError(f"lora.targets must be a non-empty subset of {TARGETS}, "
                             f"got unknown {unknown}")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _kernel_paths(params: dict, targets: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
    """Paths (dict keys) of the targeted modules, e.g. ``("layers", 0, "self_attn", "q_proj")``."""
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(k.key for k in path)
        if len(keys) >= 2 and keys[-1] == "kernel" and keys[-2] in targets:
            yield keys[:-1]


def _get(tree: dict, keys: tuple[Any, ...]) -> Any:
    for k in keys:
        tree = tree[k]
    return tree


def _set(tree: dict, keys: tuple[Any, ...], value: Any) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def init_lora(params: dict, cfg: LoRAConfig, key: jax.Array) -> dict:
    """Adapters mirroring the params' nesting: ``{..., "q_proj": {"a": [in, r], "b": [r, out]}}``.

    ``A ~ N(0, 1/in)`` (each module its own ``fold_in(key, i)``), ``B = 0``; float32.
    """
    if not cfg.enabled:
        raise ValueError("init_lora needs lora.rank >= 1")
    out: dict = {}
    for i, path in enumerate(_kernel_paths(params, cfg.targets)):
        d_in, d_out = _get(params, path + ("kernel",)).shape
        a = jax.random.normal(jax.random.fold_in(key, i), (d_in, cfg.rank), jnp.float32)
        _set(out, path, {"a": a / math.sqrt(d_in), "b": jnp.zeros((cfg.rank, d_out), jnp.float32)})
    if not out:
        raise ValueError(f"no kernels named {cfg.targets} in the parameters")
    return out


def merge(base: dict, lora: dict, cfg: LoRAConfig) -> dict:
    """Model parameters with every targeted kernel replaced by ``W + scale * A B``.

    Args:
      base: the model's pure-dict parameters (not modified).
      lora: adapters from :func:`init_lora`.
    """
    merged = jax.tree.map(lambda x: x, base)  # fresh containers, same leaves
    for path in _kernel_paths(base, cfg.targets):
        ab = _get(lora, path)
        w = _get(base, path + ("kernel",))
        delta = jnp.einsum("ir,ro->io", ab["a"], ab["b"], preferred_element_type=jnp.float32)
        _set(merged, path + ("kernel",), (w.astype(jnp.float32) + cfg.scale * delta
                                          ).astype(w.dtype))
    return merged


def train_params(base: dict, cfg: LoRAConfig, key: jax.Array) -> dict:
    """The LoRA train state's parameters ``{"base", "lora"}``."""
    return {"base": base, "lora": init_lora(base, cfg, key)}


def params_fn(cfg: LoRAConfig):
    """``train params -> model params`` for :func:`dllm_jax.train.step.make_train_step`; the base
    is behind ``stop_gradient`` so no gradient flows into it."""

    def fn(params: dict) -> dict:
        return merge(jax.lax.stop_gradient(params["base"]), params["lora"], cfg)

    return fn


def masked_optimizer(inner: optax.GradientTransformation,
                     params: dict) -> optax.GradientTransformation:
    """``inner`` (e.g. clipping + AdamW) on ``params["lora"]``; the base's updates are zero.

    ``params``: the ``{"base", "lora"}`` tree (arrays or ``ShapeDtypeStruct``); the labels are
    a fixed tree (not a callable) so ``optax.tree_map_params`` can map shardings over the state.
    """
    labels = {"base": jax.tree.map(lambda _: "frozen", params["base"]),
              "lora": jax.tree.map(lambda _: "train", params["lora"])}
    return optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels)


def shardings(base_shardings: dict, base: dict, cfg: LoRAConfig) -> dict:
    """Shardings of ``{"base", "lora"}``: ``A`` takes its kernel's row axis, ``B`` its columns."""
    lora: dict = {}
    for path in _kernel_paths(base, cfg.targets):
        ksh = _get(base_shardings, path + ("kernel",))
        spec = tuple(ksh.spec) + (None,) * (2 - len(ksh.spec))
        _set(lora, path, {"a": NamedSharding(ksh.mesh, P(spec[0], None)),
                          "b": NamedSharding(ksh.mesh, P(None, spec[1]))})
    return {"base": base_shardings, "lora": lora}


def num_adapter_params(lora: dict) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(lora))
