"""The training loop: checkpoints with exact resume, progress, JSONL metrics, TensorBoard.

Determinism contract: the batch for step ``s`` is ``batch_fn(s)`` (a pure function of the
step, built from the seed — or, for RL, of the step and the train state, which is checkpointed)
and the step's key is ``fold_in(PRNGKey(seed), s)``, so a run resumed from the checkpoint at
step ``s`` replays exactly what an uninterrupted run does. Orbax writes each checkpoint to a
temporary directory and renames it when complete, so a checkpoint being written when the
process dies is never restored (see :mod:`dllm_jax.train.checkpoint`).

Multi-process: every process runs the same loop; ``batch_fn`` returns the global batch (each
process keeps its own rows) or, with ``local_batch=True``, only this process's rows; metrics,
``config.yaml`` and the progress bar come from process 0; orbax coordinates the checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from dllm_jax.model import sharding as shd
from dllm_jax.train import lora
from dllm_jax.train import step as st
from dllm_jax.train.checkpoint import Checkpointer, CheckpointError, check_meta, key_data
from dllm_jax.train.config import TrainConfig
from dllm_jax.train.optim import learning_rate_schedule
from dllm_jax.train.overrides import dump_yaml, to_dict

LORA_KEY = 0x10A  # fold_in salt for the adapters' initial key


def dump_config(path: Path, resolved: dict[str, Any]) -> None:
    """Writes the resolved config as YAML (loadable again with ``train.overrides``)."""
    dump_yaml(resolved, path)


class MetricsWriter:
    """``metrics.jsonl`` always; TensorBoard event files when asked (needs tensorboardX)."""

    def __init__(self, out_dir: Path, tensorboard: bool = False):
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        self.primary = jax.process_index() == 0
        if tensorboard and self.primary:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard: true needs the tensorboardX package "
                                 "(pip install 'dllm-jax[tensorboard]')") from None
            self.tb = SummaryWriter(str(out_dir / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drops records past ``step`` (written by a run that died before its next checkpoint)."""
        if not self.primary or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.primary:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Trainer:
    """Runs ``config.steps`` steps of ``loss_fn`` over ``batch_fn`` with checkpoints in
    ``out_dir/checkpoints``.

    Args:
      config: the train config (steps, seed, optimiser, checkpoint cadence, mesh).
      model: initial model (its parameters are the step-0 state).
      loss_fn: ``(model, batch, key) -> (loss, aux)``; scalar entries of ``aux`` are logged
        (``reward`` also goes to the progress bar).
      batch_fn: ``step -> dict of arrays`` with a leading batch axis: host arrays, or arrays
        already on the devices (kept there; RL's rows).
      out_dir: run directory (``config.yaml``, ``metrics.jsonl``, ``checkpoints/``).
      extra_config: anything else to save in ``config.yaml`` (e.g. the model/task config);
        a mapping with its own ``train`` entry (a program's whole config) is saved as it is.
      progress: show a tqdm bar on a terminal (``"always"`` also when stderr is not a tty).
      mesh: a mesh, ``None`` for single-device jit, or ``"auto"`` for ``config.mesh``.
      local_batch: ``batch_fn`` returns only this process's rows (multi-process runs).
    """

    def __init__(self, config: TrainConfig, model: nnx.Module, loss_fn: st.LossFn,
                 batch_fn: Callable[[int], dict[str, np.ndarray]], out_dir: str | Path, *,
                 extra_config: dict | None = None, progress: bool | str = True,
                 mesh: Any = "auto", local_batch: bool = False):
        self.config = config
        self.out_dir = Path(out_dir)
        self.batch_fn = batch_fn
        self.progress = progress
        self.local_batch = local_batch
        self.mesh = shd.make_mesh(config.mesh) if mesh == "auto" else mesh
        self.optimizer = st.make_optimizer(config.optim)
        self.schedule = learning_rate_schedule(config.optim)
        self.graphdef = nnx.graphdef(model)
        self.params_fn = None
        params = p_sh = None
        if config.lora.enabled:  # adapters train, the base is frozen (see train.lora)
            base = nnx.to_pure_dict(nnx.state(model))
            params = lora.train_params(base, config.lora, jax.random.fold_in(
                jax.random.PRNGKey(config.seed), LORA_KEY))
            self.optimizer = lora.masked_optimizer(self.optimizer, params)
            self.params_fn = lora.params_fn(config.lora)
            if self.mesh is not None:
                p_sh = lora.shardings(st.param_shardings(model, self.mesh), base, config.lora)
        self.shardings = (None if self.mesh is None else st.state_shardings(
            model, self.optimizer, self.mesh, params=params, params_shardings=p_sh))
        self.state = st.init_state(model, self.optimizer, self.shardings, params=params)
        self.step_fn = st.make_train_step(self.graphdef, loss_fn, self.optimizer,
                                          grad_accum=config.optim.grad_accum, mesh=self.mesh,
                                          shardings=self.shardings, params_fn=self.params_fn)
        self.base_key = jax.random.PRNGKey(config.seed)
        extra = dict(extra_config or {})
        # A program's whole config (it has its own ``train`` section) is saved as it is, so the
        # file is a valid ``--config`` of the same command.
        self.resolved_config = extra if "train" in extra else {"train": to_dict(config), **extra}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.checkpointer = Checkpointer(self.out_dir / "checkpoints",
                                         keep=config.checkpoint.keep)
        self.metrics = MetricsWriter(self.out_dir, config.tensorboard)
        self._extra: tuple[Callable[[], Any], Callable[[Any], None]] | None = None

    def register_checkpoint_extra(self, get: Callable[[], Any],
                                  set: Callable[[Any], None]) -> None:  # noqa: A002
        """Checkpoints more state with the train state (e.g. RL's reference parameters).

        Args:
          get: returns a pytree of arrays, with the same structure and shapes every time (it is
            also the template a restore fills, so no ``None`` placeholders).
          set: receives the restored pytree when a run resumes.
        """
        self._extra = (get, set)

    # ------------------------------------------------------------------ checkpoints
    def restore_latest(self) -> int:
        """Restores the newest complete checkpoint into the state's shardings; returns its
        step (0 if there is none).

        Raises:
          CheckpointError: the checkpoint's arrays have other shapes than this run's (a changed
            model or optimiser), named in one line, or it was written with another seed.
        """
        latest = self.checkpointer.latest_step()
        if latest is None:
            return 0
        diff = self.checkpointer.shape_mismatches(latest, self._saved_tree())
        if diff:
            raise CheckpointError(
                f"{self.out_dir}: the checkpoint at step {latest} does not fit this run's "
                f"model/optimiser ({'; '.join(diff)}); resume with the original settings or "
                f"use a new output directory")
        state, meta = self.checkpointer.restore(latest, self._saved_tree())
        check_meta(meta, seed=self.config.seed, rng_key=self.base_key)
        if self._extra is not None:
            self._extra[1](state.pop("extra"))
        self.state = state
        return int(meta["data_cursor"])

    def _saved_tree(self) -> dict:
        if self._extra is None:
            return self.state
        return {**self.state, "extra": self._extra[0]()}

    def save(self, step: int) -> None:
        """Checkpoints the state after ``step`` steps (asynchronously; see ``Checkpointer``)."""
        self.checkpointer.save(step, self._saved_tree(), {
            "step": step, "seed": self.config.seed, "data_cursor": step,
            "rng_key": key_data(self.base_key)})

    def model_params(self) -> dict:
        """The model's pure-dict parameters now (LoRA adapters merged into the base)."""
        params = self.state["params"]
        return params if self.params_fn is None else self.params_fn(params)

    def place_batch(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
        """The step's batch on the mesh, rows over ``(data, fsdp)``: host arrays through
        ``put_batch``; arrays already on the devices (RL's rows, built there) stay there
        (resharded only if they are split otherwise)."""
        if not all(isinstance(v, jax.Array) for v in batch.values()):
            return st.put_batch(batch, self.mesh, local=self.local_batch)
        return batch if self.mesh is None else jax.device_put(batch,
                                                              st.batch_sharding(self.mesh))

    @property
    def model(self) -> nnx.Module:
        return st.model_from_state(self.graphdef, self.state, self.params_fn)

    # ------------------------------------------------------------------ loop
    def _open_run_dir(self, resume: bool, overwrite: bool) -> int:
        """Validates the run directory before anything in it changes; returns the start step.

        A directory that already holds checkpoints is continued with ``resume``, replaced with
        ``overwrite`` and refused otherwise. ``config.yaml`` is written only once the run is
        accepted (a refused resume leaves the directory as it was).
        """
        steps = self.checkpointer.complete_steps()
        if resume:
            start = self.restore_latest()
        else:
            if steps and not overwrite:
                raise CheckpointError(
                    f"{self.out_dir} already holds a run (checkpoint at step {steps[-1]}); pass "
                    f"--resume to continue it or --overwrite to start over")
            for step in steps:
                self.checkpointer.manager.delete(step)
            start = 0
        if jax.process_index() == 0:
            dump_config(self.out_dir / "config.yaml", self.resolved_config)
        return start

    def run(self, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
        """Trains to ``config.steps``; with ``resume`` continues from the newest complete
        checkpoint, with ``overwrite`` replaces a previous run in the directory (without
        either, a directory holding checkpoints is refused). Returns the last logged metrics."""
        cfg = self.config
        start = self._open_run_dir(resume, overwrite)
        self.metrics.truncate_after(start)
        last: dict[str, float] = {}
        bar = None
        if self.progress and jax.process_index() == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True,
                       disable=not sys.stderr.isatty() and self.progress != "always")
        t0, tokens = time.perf_counter(), 0
        for s in range(start, cfg.steps):
            given = self.batch_fn(s)
            batch = self.place_batch(given)
            self.state, metrics = self.step_fn(self.state, batch,
                                               jax.random.fold_in(self.base_key, s))
            rows = given.get("tokens", next(iter(given.values())))
            tokens += int(np.prod(np.shape(rows))) * (
                jax.process_count() if self.local_batch else 1)
            done = s + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()
                        if np.ndim(v) == 0}
                elapsed = time.perf_counter() - t0
                last["lr"] = float(self.schedule(s))
                last["tokens_per_s"] = tokens / max(elapsed, 1e-9)
                last["elapsed_s"] = elapsed
                self.metrics.write(done, last)
                if bar is not None:
                    post = {"loss": f"{last['loss']:.4f}"}
                    if "reward" in last:
                        post["reward"] = f"{last['reward']:.3f}"
                    post["tok/s"] = f"{last['tokens_per_s']:.0f}"
                    bar.set_postfix(post)
            if bar is not None:
                bar.update(1)
            if done % cfg.checkpoint.every == 0 or done == cfg.steps:
                self.save(done)
        self.checkpointer.wait()
        if bar is not None:
            bar.close()
        return last
