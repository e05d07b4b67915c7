"""The training programs behind ``dllm-jax train sft|rl`` (and the demo's and the studies' SFT
and RL phases): :func:`run_sft` and :func:`run_rl` resolve a program once, build its model,
data source, loss and (RL) rollouts, and train it with the :class:`~dllm_jax.train.Trainer`.
Data comes from a :class:`~dllm_jax.programs.datasources.DataSource` (a built-in task or a
file). The final model is written as a dllm-jax checkpoint to ``<out>/model`` with its
tokenizer and the generation settings it was trained for.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flax import nnx

from dllm_jax.data.tokenizer import load_tokenizer
from dllm_jax.errors import ConfigError
from dllm_jax.model.transformer import init_model
from dllm_jax.programs.config import DataSpec, ModelSpec, RLProgram, SFTProgram, task_options
from dllm_jax.programs.datasources import DataSource, FileSource, TaskSource
from dllm_jax.programs.losses import make_rl_loss, make_sft_loss
from dllm_jax.programs.rollouts import rollout_batcher
from dllm_jax.tasks import model_config
from dllm_jax.train.loop import Trainer
from dllm_jax.train.overrides import to_dict
from dllm_jax.weights.checkpoint import save_generation_settings
from dllm_jax.weights.convert import from_pretrained, save_checkpoint

# ``stop(model, step, metrics) -> bool``: asked after every checkpoint; True ends training.
StopFn = Callable[[nnx.Module, int, dict[str, float]], bool]


def load_model_and_source(spec: ModelSpec, data: DataSpec, seed: int
                          ) -> tuple[nnx.Module, DataSource]:
    """The program's initial model and its data source."""
    if data.task is not None:
        source = TaskSource(data.task, seed, data.num_train,
                            options=task_options(data.task_options))
        if spec.init is not None:
            return from_pretrained(spec.init, dtype=spec.dtype), source
        cfg = model_config(source.tokenizer, hidden_size=spec.hidden_size,
                           num_layers=spec.num_layers, num_heads=spec.num_heads)
        return init_model(cfg, seed=seed), source
    if spec.init is None:
        raise ConfigError("training on data.path needs model.init (a checkpoint directory)")
    model = from_pretrained(spec.init, dtype=spec.dtype)
    mc = model.config
    source = FileSource(data.path, load_tokenizer(data.tokenizer or spec.init),
                        eos_id=mc.eos_token_id,
                        pad_id=mc.eos_token_id if mc.pad_token_id is None else mc.pad_token_id,
                        split=data.split, prompt_field=data.prompt_field,
                        answer_field=data.answer_field, reward=data.reward,
                        chat_template=data.chat_template,
                        max_prompt_length=data.max_prompt_length,
                        max_answer_length=data.max_answer_length)
    return model, source


def _run(trainer: Trainer, resume: bool, overwrite: bool, stop: StopFn | None) -> None:
    """``trainer.run``; with ``stop``, in chunks of ``checkpoint.every`` steps, asking ``stop``
    after each (every chunk after the first resumes from the checkpoint just written)."""
    if stop is None:
        trainer.run(resume=resume, overwrite=overwrite)
        return
    cfg = trainer.config
    every, done = cfg.checkpoint.every, 0
    while done < cfg.steps:
        done = min(done + every, cfg.steps)
        trainer.config = dataclasses.replace(cfg, steps=done)
        first = done <= every
        last = trainer.run(resume=resume or not first, overwrite=overwrite and first)
        if stop(trainer.model, done, last):
            break
    trainer.config = cfg


def save_model(model: nnx.Module, source: DataSource, target: Path,
               generation: dict[str, int] | None) -> Path:
    """``target`` (a run's ``<out>/model``): the checkpoint, its tokenizer and the generation
    settings it was trained for (which ``generate``, ``trajectory``, ``eval`` and ``serve``
    default to)."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    save_checkpoint(model, target)
    source.save_tokenizer(target)
    if generation:
        save_generation_settings(target, generation)
    return target


def task_generation(data: DataSpec) -> dict[str, int] | None:
    """A built-in task's answer (as ``data`` configures it) decoded one token per step, as the
    demo evaluates it; None for data from files."""
    if data.task is None:
        return None
    a = data.puzzle().answer_length
    return {"gen_length": a, "steps": a, "block_length": a}


# ------------------------------------------------------------------------------ programs
def run_sft(prog: SFTProgram, resume: bool = False, progress: bool = True, *,
            overwrite: bool = False, stop: StopFn | None = None, mesh: Any = "auto") -> Path:
    """Trains ``prog`` (resolved here) and returns ``<out>/model``.

    Args:
      prog: the program.
      resume: continue from the newest complete checkpoint in ``prog.out``.
      progress: show a progress bar on a terminal.
      overwrite: replace a previous run in ``prog.out`` (without it or ``resume``, a directory
        that holds checkpoints is refused).
      stop: asked after every checkpoint; True ends training there (the demo's early stop).
      mesh: the Trainer's mesh (``"auto"``: ``train.mesh``; None: single-device jit).
    """
    prog = prog.resolved()
    model, source = load_model_and_source(prog.model, prog.data, prog.train.seed)
    trainer = Trainer(prog.train, model, make_sft_loss(prog.sft, source.prompt_length),
                      source.sft_batch_fn(prog.train.batch_size, prog.train.seed), prog.out,
                      extra_config=to_dict(prog), progress=progress, mesh=mesh)
    _run(trainer, resume, overwrite, stop)
    return save_model(trainer.model, source, Path(prog.out) / "model",
                      task_generation(prog.data))


def run_rl(prog: RLProgram, resume: bool = False, progress: bool = True, *,
           overwrite: bool = False, stop: StopFn | None = None, mesh: Any = "auto") -> Path:
    """Trains ``prog`` (resolved here) and returns ``<out>/model`` (see :func:`run_sft`;
    ``stop`` is asked after every checkpoint, e.g. to evaluate the policy during RL; the
    chunked run equals one uninterrupted run)."""
    prog = prog.resolved()
    rl = prog.rl
    if prog.train.checkpoint.every % rl.inner_iterations:
        raise ConfigError(f"train.checkpoint.every ({prog.train.checkpoint.every}) must be a "
                          f"multiple of rl.inner_iterations ({rl.inner_iterations}) so a resumed "
                          "run re-creates the same rollouts")
    model, source = load_model_and_source(prog.model, prog.data, prog.train.seed)
    batcher = rollout_batcher(rl, source, prog.train.seed)
    trainer = Trainer(prog.train, model, make_rl_loss(rl, rl.prompts_per_step * rl.group_size),
                      batcher, prog.out, extra_config=to_dict(prog),
                      progress=progress, mesh=mesh)
    batcher.attach(trainer)
    _run(trainer, resume, overwrite, stop)
    s = rl.sampler  # what the policy was trained to generate
    return save_model(trainer.model, source, Path(prog.out) / "model", {
        "gen_length": s.gen_length, "steps": s.steps, "block_length": s.block_length})
