"""Orbax checkpoints of the train state with exact resume.

A checkpoint at step ``s`` holds two items:

- ``state``: the train state ``{"params", "opt", "step"}`` (global, possibly sharded arrays;
  every process writes its own shards);
- ``meta``: JSON ``{"step", "seed", "data_cursor", "rng_key"}`` — the data cursor is the next
  step whose batch the loop will draw (batches are a pure function of ``(seed, step)``) and
  ``rng_key`` the raw data of the base key whose ``fold_in(key, step)`` drives each step.

Atomicity: orbax writes a step into ``<step>.orbax-checkpoint-tmp-<time>`` and renames it to
``<step>`` only when every item (and every process) is done, and it never lists a temporary
directory. :meth:`Checkpointer.latest_step` additionally requires a step directory to carry
orbax's ``_CHECKPOINT_METADATA`` and both items, so a half-copied or hand-made directory is
skipped too and the next older complete checkpoint is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "meta")


class CheckpointError(ValueError):
    """A checkpoint cannot be used to resume this run (seed or structure mismatch)."""


class Checkpointer:
    """Save every ``every`` steps (and whenever asked), keeping the newest ``keep``.

    Args:
      directory: checkpoint directory (created if missing).
      keep: how many complete checkpoints to keep.
      async_save: write in a background thread after the device-to-host copy (the next
        save, :meth:`wait` and :meth:`close` wait for it).
    """

    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=ITEMS,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save))

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts saving ``state`` and ``meta`` as step ``step`` (returns after the host copy)."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(_jsonable(meta))),
            force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def complete_steps(self) -> list[int]:
        """Steps whose checkpoint is finalised and complete, ascending."""
        self.manager.reload()
        return sorted(s for s in self.manager.all_steps() if self._is_complete(s))

    def latest_step(self) -> int | None:
        steps = self.complete_steps()
        return steps[-1] if steps else None

    def _is_complete(self, step: int) -> bool:
        d = self.directory / str(step)
        return (d / "_CHECKPOINT_METADATA").is_file() and all((d / i).is_dir() for i in ITEMS)

    def shape_mismatches(self, step: int, abstract_state: Any, limit: int = 3) -> list[str]:
        """``"path: checkpoint (a, b) vs this run (c, d)"`` for the parameters of
        ``abstract_state`` whose saved shape differs (or that only one side has)."""
        # The item's own tree metadata, through its handler: a checkpointer would also look for
        # a step-level metadata file inside the item and warn that it is missing.
        meta = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
        saved = _param_shapes(meta.tree)
        want = _param_shapes(abstract_state)
        out = []
        for path in sorted(set(saved) | set(want)):
            if saved.get(path) != want.get(path):
                out.append(f"{path}: checkpoint {saved.get(path, 'absent')} vs this run "
                           f"{want.get(path, 'absent')}")
        return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores step ``step`` into the shardings of ``abstract_state``.

        Args:
          step: a step from :meth:`complete_steps`.
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` (with ``sharding``) or arrays
            whose shapes, dtypes and shardings the restored state takes.

        Returns:
          ``(state, meta)``.
        """
        target = jax.tree.map(_abstract, abstract_state)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])


def _path_name(entry: Any) -> str:
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    return str(entry)


def _param_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Dotted path -> shape for every array under ``tree["params"]`` (arrays, abstract arrays
    and orbax's array metadata all carry ``shape``)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return {".".join(_path_name(e) for e in path): tuple(leaf.shape) for path, leaf in leaves}


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def key_data(key: jax.Array) -> list[int]:
    """Raw uint32 words of a PRNG key (typed or legacy ``uint32[2]``), for ``meta``."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(v) for v in np.asarray(key).ravel()]


def check_meta(meta: dict[str, Any], *, seed: int, rng_key: jax.Array) -> None:
    """Raises :class:`CheckpointError` if a checkpoint belongs to a run with another seed."""
    if meta.get("seed") != seed or meta.get("rng_key") != key_data(rng_key):
        raise CheckpointError(
            f"checkpoint at step {meta.get('step')} was written with seed {meta.get('seed')} "
            f"but this run has seed {seed}; resuming would change the data order and PRNG "
            "stream (use a new output directory or the original seed)")
