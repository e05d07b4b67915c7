"""The loading and conversion entry points: ``from_pretrained`` (an HF directory or a dllm-jax
checkpoint, decided by the files present) and the two ``dllm-jax convert`` directions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from dllm_jax.errors import ConversionError
from dllm_jax.model import sharding as shd
from dllm_jax.model.transformer import Transformer
from dllm_jax.weights.checkpoint import (
    check_model_dir,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dllm_jax.weights.hf import export_hf, load_hf
from dllm_jax.weights.keys import abstract_state


def from_pretrained(path: str | os.PathLike[str], dtype: str = "float32",
                    mesh: Mesh | None = None, rules: shd.ShardingRules | None = None,
                    **config_overrides: Any) -> Transformer:
    """Loads an HF directory or a dllm-jax checkpoint (decided by the files present)."""
    path = check_model_dir(path)
    if is_checkpoint(path):
        model = load_checkpoint(path, dtype=dtype, mesh=mesh, rules=rules)
        if config_overrides:
            graphdef, state = nnx.split(model)
            graphdef, _ = abstract_state(model.config.replace(**config_overrides))
            model = nnx.merge(graphdef, state)
        return model
    return load_hf(path, dtype=dtype, mesh=mesh, rules=rules, **config_overrides)


def hf_to_checkpoint(hf_dir: str | os.PathLike[str], out: str | os.PathLike[str],
                     dtype: str = "float32", allow_nonfinite: bool = False) -> Path:
    """``dllm-jax convert hf-to-orbax``: validates everything, then writes atomically."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out}: output exists and is not empty")
    model = load_hf(hf_dir, dtype=dtype, allow_nonfinite=allow_nonfinite)
    return save_checkpoint(model, out)


def checkpoint_to_hf(ckpt: str | os.PathLike[str], out: str | os.PathLike[str],
                     dtype: str | None = None) -> Path:
    """``dllm-jax convert orbax-to-hf``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out}: output exists and is not empty")
    model = load_checkpoint(ckpt)
    return export_hf(model, out, dtype=dtype)
