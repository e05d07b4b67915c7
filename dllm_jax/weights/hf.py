"""HF checkpoint directories: streaming import (tensor by tensor, sharded on a mesh when given)
and export with the original family's key names and config.json."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from dllm_jax.errors import ConfigError, ConversionError
from dllm_jax.model import sharding as shd
from dllm_jax.model.config import ModelConfig
from dllm_jax.model.transformer import Transformer
from dllm_jax.weights.checkpoint import atomic_output_dir
from dllm_jax.weights.keys import abstract_state, flat_paths, hf_key
from dllm_jax.weights.safetensors_io import (
    FLOAT_DTYPES,
    SafetensorsError,
    SafetensorsFile,
    write_safetensors,
)


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise ConversionError(f"{cfg_path}: missing (not an HF checkpoint directory)")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{cfg_path}: not valid JSON ({e})") from None


def _open_safetensors(hf_dir: Path) -> dict[str, SafetensorsFile]:
    """Key -> open file, for a single file or an index of shards."""
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ConversionError(f"{index}: not a valid safetensors index ({e})") from None
        names = sorted(set(weight_map.values()))
    else:
        names = sorted(p.name for p in hf_dir.glob("*.safetensors"))
        weight_map = None
    if not names:
        raise ConversionError(f"{hf_dir}: no .safetensors files found")
    files: dict[str, SafetensorsFile] = {}
    for name in names:
        fpath = hf_dir / name
        if not fpath.is_file():
            raise ConversionError(f"{fpath}: missing (listed in model.safetensors.index.json)")
        try:
            files[name] = SafetensorsFile(fpath)
        except SafetensorsError as e:
            raise ConversionError(str(e)) from None
    by_key: dict[str, SafetensorsFile] = {}
    for name, f in files.items():
        for key in f.keys():
            if weight_map is not None and weight_map.get(key) != name:
                raise ConversionError(f"{f.path}: tensor {key} is not where the index says")
            by_key[key] = f
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in by_key:
                raise ConversionError(f"{hf_dir / name}: tensor {key} listed in the index is "
                                      f"missing from the file")
    return by_key


def _plan_import(config: ModelConfig, state: nnx.State, by_key: dict[str, SafetensorsFile],
                 hf_dir: Path) -> list[tuple[tuple[Any, ...], str, bool]]:
    """Checks names and shapes of every tensor before any is read."""
    plan = []
    expected = set()
    flat = dict(nnx.to_flat_state(state))
    for path, dotted in flat_paths(state):
        key, transpose = hf_key(config.family, dotted)
        expected.add(key)
        if key not in by_key:
            raise ConversionError(f"{hf_dir}: missing tensor {key} (needed for {dotted})")
        want = tuple(flat[path].get_value().shape)
        got = by_key[key].shape(key)
        if transpose:
            got = got[::-1]
        if got != want:
            raise ConversionError(
                f"{by_key[key].path}: tensor {key} has shape {list(by_key[key].shape(key))}, "
                f"expected {list(want[::-1] if transpose else want)}")
        stored = by_key[key].dtype_name(key)
        if stored not in FLOAT_DTYPES:
            raise ConversionError(f"{by_key[key].path}: tensor {key} has dtype {stored}, "
                                  f"expected a floating-point tensor")
        plan.append((path, key, transpose))
    tied_head = {hf_key(config.family, "lm_head")[0]} if config.tie_word_embeddings else set()
    unexpected = sorted(set(by_key) - expected - tied_head)
    unexpected = [k for k in unexpected if not k.endswith("rotary_emb.inv_freq")]
    if unexpected:
        shown = ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else "")
        raise ConversionError(
            f"{by_key[unexpected[0]].path}: {len(unexpected)} unexpected tensor(s): {shown}")
    return plan


def load_hf(hf_dir: str | os.PathLike[str], dtype: str = "float32", mesh: Mesh | None = None,
            rules: shd.ShardingRules | None = None, allow_nonfinite: bool = False,
            **config_overrides: Any) -> Transformer:
    """Loads an HF checkpoint directory, streaming tensor by tensor from the safetensors files.

    On a mesh each device receives only its own slices (``make_array_from_callback`` over the
    memory-mapped file), so the full model never sits on one device. A tensor holding NaN or
    Inf is refused (naming the file and tensor) unless ``allow_nonfinite``.
    """
    hf_dir = Path(hf_dir)
    hf = read_hf_config(hf_dir)
    try:
        config = ModelConfig.from_hf_config(hf, source=str(hf_dir / "config.json"), dtype=dtype,
                                            **config_overrides)
    except ConfigError as e:
        raise ConversionError(str(e)) from None
    by_key = _open_safetensors(hf_dir)
    graphdef, state = abstract_state(config)
    plan = _plan_import(config, state, by_key, hf_dir)
    target = jnp.dtype(dtype)
    flat = dict(nnx.to_flat_state(state))
    shardings = (dict(nnx.to_flat_state(shd.state_shardings(state, mesh, rules)))
                 if mesh is not None else None)
    for path, key, transpose in plan:
        src = by_key[key]
        shape = tuple(flat[path].get_value().shape)

        def read(index: Any, key: str = key, src: SafetensorsFile = src,
                 transpose: bool = transpose) -> np.ndarray:
            arr = src.get(key)
            if transpose:
                arr = arr.T
            # An explicit copy: the device buffer must not alias the (released) mapping.
            out = np.array(arr[index], dtype=target, copy=True)
            if not allow_nonfinite and not np.isfinite(out.astype(np.float32)).all():
                raise ConversionError(f"{src.path}: tensor {key} holds NaN or Inf values "
                                      f"(pass allow_nonfinite / --allow-nonfinite to keep them)")
            return out

        if shardings is not None:
            sharding = shardings[path].get_value()
            value = jax.make_array_from_callback(shape, sharding, read)
        else:
            value = jnp.asarray(read(tuple(slice(None) for _ in shape)))
        flat[path].set_value(value)
        src.release()
    for f in set(by_key.values()):
        f.close()
    return nnx.merge(graphdef, state)


def export_hf(model: Transformer, out: str | os.PathLike[str], *,
              dtype: str | None = None, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Writes an HF directory with the original family's key names and config.json.

    Tensors are fetched and written one at a time; outputs above ``max_shard_bytes`` are split
    into shards with a ``model.safetensors.index.json``, as transformers does.
    """
    config = model.config
    np_dtype = np.dtype(ml_dtypes.bfloat16 if (dtype or config.dtype) == "bfloat16"
                        else np.float32)
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    entries: list[tuple[str, tuple[int, ...], Any, Callable[[], np.ndarray]]] = []
    for path, dotted in flat_paths(state):
        key, transpose = hf_key(config.family, dotted)
        shape = tuple(flat[path].get_value().shape)

        def produce(path: Any = path, transpose: bool = transpose) -> np.ndarray:
            arr = np.asarray(jax.device_get(flat[path].get_value()).astype(np_dtype))
            return arr.T if transpose else arr

        entries.append((key, shape[::-1] if transpose else shape, np_dtype, produce))
    shards: list[list[Any]] = [[]]
    size = 0
    for entry in entries:
        nbytes = int(np.prod(entry[1])) * np_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    with atomic_output_dir(out) as tmp:
        hf_cfg = config.to_hf_config()
        hf_cfg["torch_dtype"] = "bfloat16" if np_dtype != np.float32 else "float32"
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True))
        weight_map = {}
        for n, shard in enumerate(shards):
            name = ("model.safetensors" if len(shards) == 1
                    else f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors")
            producers = {e[0]: e[3] for e in shard}
            write_safetensors(tmp / name, [(e[0], e[1], e[2]) for e in shard],
                              lambda k: producers[k]())
            weight_map.update({e[0]: name for e in shard})
        if len(shards) > 1:
            total = sum(int(np.prod(e[1])) * np_dtype.itemsize for e in entries)
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return Path(out)
