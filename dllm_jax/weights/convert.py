"""HF safetensors <-> dllm-jax checkpoints: the key-mapping table, streaming import and export.

A dllm-jax checkpoint directory holds ``dllm_jax_config.json`` (the :class:`ModelConfig`) and
``params/`` (an orbax checkpoint of the NNX parameter state). Every writer builds its output in a
temporary sibling directory and renames it into place when complete, so an interrupted run never
leaves something that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from dllm_jax.model import sharding as shd
from dllm_jax.errors import ConfigError, ConversionError
from dllm_jax.model.config import ModelConfig
from dllm_jax.model.transformer import Transformer
from dllm_jax.weights.safetensors_io import SafetensorsError, SafetensorsFile, write_safetensors

CONFIG_NAME = "dllm_jax_config.json"
PARAMS_DIR = "params"


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


def _flat_paths(state: nnx.State) -> list[tuple[tuple[Any, ...], str]]:
    return [(path, ".".join(map(str, path))) for path, _ in nnx.to_flat_state(state)]


# ------------------------------------------------------------------ reading HF directories
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
    for path, dotted in _flat_paths(state):
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
        plan.append((path, key, transpose))
    tied_head = {hf_key(config.family, "lm_head")[0]} if config.tie_word_embeddings else set()
    unexpected = sorted(set(by_key) - expected - tied_head - _IGNORABLE)
    unexpected = [k for k in unexpected if not k.endswith("rotary_emb.inv_freq")]
    if unexpected:
        shown = ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else "")
        raise ConversionError(
            f"{by_key[unexpected[0]].path}: {len(unexpected)} unexpected tensor(s): {shown}")
    return plan


_IGNORABLE: set[str] = set()


def load_hf(hf_dir: str | os.PathLike[str], dtype: str = "float32", mesh: Mesh | None = None,
            rules: shd.ShardingRules | None = None, **config_overrides: Any) -> Transformer:
    """Loads an HF checkpoint directory, streaming tensor by tensor from the safetensors files.

    On a mesh each device receives only its own slices (``make_array_from_callback`` over the
    memory-mapped file), so the full model never sits on one device.
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
            return np.array(arr[index], dtype=target, copy=True)

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


# ------------------------------------------------------------------ dllm-jax (orbax) checkpoints
@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary directory that is renamed to ``out`` only if the block succeeds.

    Raises:
      ConversionError: ``out`` exists and is not empty.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out}: output exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(model: Transformer, out: str | os.PathLike[str]) -> Path:
    """Writes ``model`` as a dllm-jax checkpoint (orbax), atomically."""
    import orbax.checkpoint as ocp

    with atomic_output_dir(out) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2))
        state = nnx.state(model, nnx.Param)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save((tmp / PARAMS_DIR).absolute(), nnx.to_pure_dict(state))
    return Path(out)


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def load_checkpoint(path: str | os.PathLike[str], dtype: str | None = None,
                    mesh: Mesh | None = None, rules: shd.ShardingRules | None = None
                    ) -> Transformer:
    """Restores a dllm-jax checkpoint, directly into the mesh's shardings when given."""
    import orbax.checkpoint as ocp

    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise ConversionError(f"{cfg_file}: missing (not a dllm-jax checkpoint)")
    if not (path / PARAMS_DIR).is_dir():
        raise ConversionError(f"{path / PARAMS_DIR}: missing (incomplete checkpoint)")
    config = ModelConfig.from_dict(json.loads(cfg_file.read_text()))
    saved_dtype = config.dtype
    if dtype is not None:
        config = config.replace(dtype=dtype)
    graphdef, state = abstract_state(config.replace(dtype=saved_dtype))
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), shd.MESH_AXES)
    shardings = shd.state_shardings(state, mesh, rules)
    target = jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype,
                                          sharding=s.get_value()),
        state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore((path / PARAMS_DIR).absolute(), nnx.to_pure_dict(target))
    nnx.replace_by_pure_dict(state, restored)
    if config.dtype != saved_dtype:
        new = jnp.dtype(config.dtype)
        state = jax.tree.map(lambda x: x.astype(new), state)
    graphdef, _ = abstract_state(config)
    return nnx.merge(graphdef, state)


def from_pretrained(path: str | os.PathLike[str], dtype: str = "float32",
                    mesh: Mesh | None = None, rules: shd.ShardingRules | None = None,
                    **config_overrides: Any) -> Transformer:
    """Loads an HF directory or a dllm-jax checkpoint (decided by the files present)."""
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(f"{path}: not a directory")
    if is_checkpoint(path):
        model = load_checkpoint(path, dtype=dtype, mesh=mesh, rules=rules)
        if config_overrides:
            graphdef, state = nnx.split(model)
            graphdef, _ = abstract_state(model.config.replace(**config_overrides))
            model = nnx.merge(graphdef, state)
        return model
    return load_hf(path, dtype=dtype, mesh=mesh, rules=rules, **config_overrides)


def hf_to_checkpoint(hf_dir: str | os.PathLike[str], out: str | os.PathLike[str],
                     dtype: str = "float32") -> Path:
    """``dllm-jax convert hf-to-orbax``: validates everything, then writes atomically."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out}: output exists and is not empty")
    model = load_hf(hf_dir, dtype=dtype)
    return save_checkpoint(model, out)


# ------------------------------------------------------------------ export
def export_hf(model: Transformer, out: str | os.PathLike[str], *,
              dtype: str | None = None, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Writes an HF directory with the original family's key names and config.json.

    Tensors are fetched and written one at a time; outputs above ``max_shard_bytes`` are split
    into shards with a ``model.safetensors.index.json``, as transformers does.
    """
    import ml_dtypes

    config = model.config
    np_dtype = np.dtype(ml_dtypes.bfloat16 if (dtype or config.dtype) == "bfloat16"
                        else np.float32)
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    entries: list[tuple[str, tuple[int, ...], Any, Callable[[], np.ndarray]]] = []
    for path, dotted in _flat_paths(state):
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


def checkpoint_to_hf(ckpt: str | os.PathLike[str], out: str | os.PathLike[str],
                     dtype: str | None = None) -> Path:
    """``dllm-jax convert orbax-to-hf``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out}: output exists and is not empty")
    model = load_checkpoint(ckpt)
    return export_hf(model, out, dtype=dtype)


def shardings_for(model: Transformer, mesh: Mesh) -> dict[str, NamedSharding]:
    """Flat ``path -> NamedSharding`` the rules assign (for tests and inspection)."""
    state = nnx.state(model, nnx.Param)
    sh = shd.state_shardings(state, mesh)
    return {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(sh)}
