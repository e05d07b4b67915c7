"""dllm-jax checkpoints: ``dllm_jax_config.json`` (the :class:`ModelConfig`), ``params/``
(an orbax checkpoint of the NNX parameter state) and, for a model trained on a task, its
generation settings ``dllm_jax_generation.json`` (``gen_length``, ``steps``, ``block_length``:
what the sampler commands default to).

Every writer builds its output in a temporary sibling directory and renames it into place when
complete, so an interrupted run never leaves something that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from dllm_jax.errors import ConversionError
from dllm_jax.model import sharding as shd
from dllm_jax.model.config import ModelConfig
from dllm_jax.model.transformer import Transformer
from dllm_jax.weights.keys import abstract_state

CONFIG_NAME = "dllm_jax_config.json"
PARAMS_DIR = "params"
GENERATION_NAME = "dllm_jax_generation.json"
GENERATION_KEYS = ("gen_length", "steps", "block_length")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Removes ``.<name>.tmp-<pid>-*`` siblings of ``out`` left by writers that were killed
    (their process no longer exists); returns what was removed."""
    removed = []
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name[len(f".{out.name}.tmp-"):].split("-", 1)[0]
        if tmp.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``SystemExit(143)`` inside the block (main thread only), so cleanup code
    runs when a job scheduler or ``kill`` stops the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary directory that is renamed to ``out`` only if the block succeeds.

    The temporary directory ``.<name>.tmp-<pid>-*`` sits beside ``out``; it is removed when the
    block fails, is interrupted or the process gets SIGTERM, and a later writer to the same
    ``out`` removes ones left by killed processes (SIGKILL). The result gets the usual
    permissions (``0777 & ~umask``), not the private mode of a temporary directory.

    Raises:
      ConversionError: ``out`` exists and is not empty.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out}: output exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    with _sigterm_raises():
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
            yield tmp
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def save_checkpoint(model: Transformer, out: str | os.PathLike[str]) -> Path:
    """Writes ``model`` as a dllm-jax checkpoint (orbax), atomically."""
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
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise ConversionError(f"{cfg_file}: missing (not a dllm-jax checkpoint)")
    if not (path / PARAMS_DIR).is_dir():
        raise ConversionError(f"{path / PARAMS_DIR}: missing (incomplete checkpoint)")
    try:
        config = ModelConfig.from_dict(json.loads(cfg_file.read_text()))
    except (ValueError, TypeError, KeyError) as e:
        raise ConversionError(f"{cfg_file}: not a valid dllm-jax model config ({_first_line(e)})"
                              ) from None
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
    try:
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore((path / PARAMS_DIR).absolute(), nnx.to_pure_dict(target))
    except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
        raise ConversionError(f"{path / PARAMS_DIR}: cannot restore the parameters "
                              f"({_first_line(e)})") from None
    nnx.replace_by_pure_dict(state, restored)
    if config.dtype != saved_dtype:
        new = jnp.dtype(config.dtype)
        state = jax.tree.map(lambda x: x.astype(new), state)
    graphdef, _ = abstract_state(config)
    return nnx.merge(graphdef, state)


def save_generation_settings(model_dir: str | os.PathLike[str], settings: dict[str, int]) -> None:
    """Writes the generation settings a model was trained for beside its checkpoint."""
    bad = sorted(set(settings) - set(GENERATION_KEYS))
    if bad:
        raise ValueError(f"unknown generation settings {bad}; known: {list(GENERATION_KEYS)}")
    (Path(model_dir) / GENERATION_NAME).write_text(
        json.dumps({k: int(v) for k, v in settings.items()}, indent=2))


def generation_settings(model_dir: str | os.PathLike[str]) -> dict[str, int]:
    """The generation settings saved with a checkpoint (``{}`` when it has none).

    Raises:
      ConversionError: the file is not JSON, has other keys or values that are not positive
        integers.
    """
    path = Path(model_dir) / GENERATION_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or set(data) - set(GENERATION_KEYS) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in data.values()):
        raise ConversionError(f"{path}: expected positive integers for some of "
                              f"{', '.join(GENERATION_KEYS)}, got {data!r}")
    return data


def _run_holding(path: Path) -> Path | None:
    """The training run directory (one with ``checkpoints/``) that ``path`` is, or lies inside
    through its ``checkpoints/`` (a checkpoint step, or an item of one)."""
    if (path / "checkpoints").is_dir():
        return path
    for inner in (path, *list(path.parents)[:2]):
        if inner.name == "checkpoints" and inner.is_dir():
            return inner.parent
    return None


def check_model_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` if it can be a model directory; a training run directory or one of its
    checkpoints (which hold the train state, not a model) is refused, naming ``<run>/model``.

    Raises:
      ConversionError: ``path`` is not a directory, or is a training run or checkpoint.
    """
    p = Path(path)
    if not p.is_dir():
        raise ConversionError(f"{p}: not a directory")
    if is_checkpoint(p) or (p / "config.json").is_file():
        return p
    run = _run_holding(p.absolute())
    if run is None:
        return p
    what = "a training run directory" if run == p.absolute() else "inside a training run"
    model = run / "model" if p.is_absolute() else Path(os.path.relpath(run / "model"))
    later = "" if is_checkpoint(run / "model") else " (written when the run finishes)"
    raise ConversionError(f"{p} is {what}, not a model; use {model}{later}")
