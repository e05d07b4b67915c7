"""The training loop: checkpoints with exact resume, progress, JSONL metrics, TensorBoard.

Determinism contract: the batch for step ``s`` is ``batch_fn(s)`` (a pure function of the
step, built from the seed) and the step's key is ``fold_in(PRNGKey(seed), s)``, so a run
resumed from the checkpoint at step ``s`` replays exactly what an uninterrupted run does.
Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
checkpoint being written when the process dies is never listed (and never restored).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml
from flax import nnx

from dllm_jax import sharding as shd
from dllm_jax.train import step as st
from dllm_jax.train.config import TrainConfig


def to_plain(obj: Any) -> Any:
    """Dataclasses/tuples -> YAML-friendly dicts/lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


class MetricsWriter:
    """``metrics.jsonl`` always; TensorBoard event files when asked (needs tensorboardX)."""

    def __init__(self, out_dir: Path, tensorboard: bool = False):
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard: true needs the tensorboardX package "
                                 "(pip install tensorboardX)") from None
            self.tb = SummaryWriter(str(out_dir / "tb"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if jax.process_index() != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()


class Trainer:
    """Runs ``config.steps`` steps of ``loss_fn`` over ``batch_fn`` with checkpoints in
    ``out_dir/checkpoints``.

    Args:
      model: initial model (its parameters are the step-0 state).
      loss_fn: ``(model, batch, key) -> (loss, aux)``.
      batch_fn: ``step -> dict of host arrays`` (the global batch).
      out_dir: run directory (config.yaml, metrics.jsonl, checkpoints/).
      extra_config: anything else to save in config.yaml (e.g. the model/task config).
    """

    def __init__(self, config: TrainConfig, model: nnx.Module, loss_fn: st.LossFn,
                 batch_fn: Callable[[int], dict[str, np.ndarray]], out_dir: str | Path, *,
                 extra_config: dict | None = None, progress: bool = True,
                 mesh: Any = "auto"):
        self.config = config
        self.out_dir = Path(out_dir)
        self.batch_fn = batch_fn
        self.progress = progress
        self.mesh = shd.make_mesh(config.mesh) if mesh == "auto" else mesh
        self.optimizer = st.make_optimizer(config.optim)
        self.graphdef = nnx.graphdef(model)
        self.shardings = (None if self.mesh is None
                          else st.state_shardings(model, self.optimizer, self.mesh))
        self.state = st.init_state(model, self.optimizer, self.shardings)
        self.step_fn = st.make_train_step(self.graphdef, loss_fn, self.optimizer,
                                          grad_accum=config.optim.grad_accum, mesh=self.mesh,
                                          shardings=self.shardings)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            resolved = {"train": to_plain(config), **(extra_config or {})}
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        self.manager = ocp.CheckpointManager(
            (self.out_dir / "checkpoints").absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint.keep,
                                                 create=True))
        self.metrics = MetricsWriter(self.out_dir, config.tensorboard)

    # ------------------------------------------------------------------ checkpoints
    def restore_latest(self) -> int:
        """Restores the newest complete checkpoint; returns its step (0 if none)."""
        latest = self.manager.latest_step()
        if latest is None:
            return 0
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            self.state, self.shardings if self.shardings is not None else
            jax.tree.map(lambda x: x.sharding, self.state))
        self.state = self.manager.restore(latest, args=ocp.args.StandardRestore(abstract))
        return int(latest)

    def save(self, step: int) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(self.state), force=True)
        self.manager.wait_until_finished()

    @property
    def model(self) -> nnx.Module:
        return st.model_from_state(self.graphdef, self.state)

    # ------------------------------------------------------------------ loop
    def run(self, resume: bool = False) -> dict[str, float]:
        cfg = self.config
        start = self.restore_latest() if resume else 0
        base_key = jax.random.PRNGKey(cfg.seed)
        last: dict[str, float] = {}
        bar = None
        if self.progress and jax.process_index() == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True,
                       disable=not sys.stderr.isatty() and self.progress != "always")
        t0, tokens = time.perf_counter(), 0
        for s in range(start, cfg.steps):
            host = self.batch_fn(s)
            batch = st.put_batch(host, self.mesh)
            self.state, metrics = self.step_fn(self.state, batch, jax.random.fold_in(base_key, s))
            tokens += int(np.prod(next(iter(host.values())).shape))
            done = s + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                last["tokens_per_s"] = tokens / max(time.perf_counter() - t0, 1e-9)
                self.metrics.write(done, last)
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4f}",
                                    tok_s=f"{last['tokens_per_s']:.0f}")
            if bar is not None:
                bar.update(1)
            if done % cfg.checkpoint.every == 0 or done == cfg.steps:
                self.save(done)
        if bar is not None:
            bar.close()
        return last
