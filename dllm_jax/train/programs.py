"""The training programs behind ``dllm-jax train sft|rl`` (and the demo's SFT and RL phases).

A program is a frozen dataclass (model, data, train and an ``sft`` or ``rl`` section); the YAML
file and ``--set`` items override its fields (unknown keys are errors). The loss comes from
the loss registry by name (``sft.loss`` / ``rl.loss``) and every loss knob left unset takes
that loss's published default: :meth:`SFTProgram.resolved` / :meth:`RLProgram.resolved` fill
them in, and the resolved config is printed and saved as ``config.yaml`` beside the
checkpoints. Data comes from a :class:`~dllm_jax.data.sources.DataSource` (a built-in task or a
file). The final model is written as a dllm-jax checkpoint to ``<out>/model`` with its
tokenizer.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from dllm_jax import objectives as obj
from dllm_jax.data.sources import REWARDS, DataSource, FileSource, TaskSource
from dllm_jax.data.tokenizer import load_tokenizer
from dllm_jax.errors import ConfigError
from dllm_jax.model.transformer import init_model
from dllm_jax.tasks import get_puzzle, model_config
from dllm_jax.train.config import CheckpointConfig, OptimConfig, SFTConfig, TrainConfig
from dllm_jax.train.loop import Trainer
from dllm_jax.train.overrides import to_dict
from dllm_jax.train.rl import RLConfig, RolloutBatcher, agdo_order, make_rl_loss
from dllm_jax.weights.checkpoint import save_generation_settings
from dllm_jax.weights.convert import from_pretrained, save_checkpoint

# ``stop(model, step, metrics) -> bool``: asked after every checkpoint; True ends training.
StopFn = Callable[[nnx.Module, int, dict[str, float]], bool]


def task_options(text: str) -> dict[str, Any]:
    """``"a=1,b=x"`` -> ``{"a": 1, "b": "x"}`` (integers and floats converted)."""
    out: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"data.task_options item {item!r} is not name=value")
        for conv in (int, float, str):
            try:
                out[name.strip()] = conv(value.strip())
                break
            except ValueError:
                continue
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """``init``: an HF or dllm-jax checkpoint directory; None builds a new character-level
    model of the given size (built-in tasks only)."""

    init: str | None = None
    dtype: str = "float32"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSpec:
    """A built-in ``task`` (addition | sudoku | countdown) or a ``path`` (JSONL/CSV/Parquet file
    or HF dataset name) with ``prompt_field``/``answer_field``; RL on files scores with
    ``reward`` (exact | gsm8k | math). ``task_options``: the task's spec fields as
    ``"name=value,..."`` (e.g. ``"grid_split=sft"`` for Sudoku's grid-level split)."""

    task: str | None = "addition"
    path: str | None = None
    split: str = "train"
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    reward: str = "exact"
    task_options: str = ""
    tokenizer: str | None = None
    chat_template: bool = True
    num_train: int = 20000
    max_prompt_length: int = 256
    max_answer_length: int = 256

    def __post_init__(self):
        if (self.task is None) == (self.path is None):
            raise ValueError("set exactly one of data.task and data.path")
        task_options(self.task_options)  # a malformed item fails here
        if self.reward not in REWARDS:
            raise ValueError(f"data.reward must be exact, gsm8k or math, got {self.reward!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTProgram:
    out: str = "out/sft"
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    train: TrainConfig = TrainConfig(steps=600, batch_size=256, log_every=20,
                                     optim=OptimConfig(lr=1e-3, total_steps=600, warmup_steps=50,
                                                       weight_decay=0.01),
                                     checkpoint=CheckpointConfig(every=200, keep=2))
    sft: SFTConfig = SFTConfig()

    def resolved(self) -> SFTProgram:
        """The program with the loss's published defaults filled in."""
        return dataclasses.replace(self, sft=self.sft.resolved())


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLProgram:
    out: str = "out/rl"
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    # Checkpoints every 12 steps: a multiple of d1's mu = 12 inner iterations (see run_rl).
    train: TrainConfig = TrainConfig(steps=40, batch_size=1, log_every=1,
                                     optim=OptimConfig(lr=2e-5, total_steps=40,
                                                       schedule="constant"),
                                     checkpoint=CheckpointConfig(every=12, keep=2))
    rl: RLConfig = RLConfig()

    def resolved(self) -> RLProgram:
        """The program with the loss's published defaults, the budget and the selector filled
        in; on a built-in task the sampler generates exactly the task's answer, one token
        per step (the budget is capped at that many steps)."""
        rl = self.rl
        if self.data.task is not None:
            a = get_puzzle(self.data.task).answer_length
            if rl.sampler.gen_length != a:
                rl = dataclasses.replace(
                    rl, sampler=dataclasses.replace(rl.sampler, gen_length=a, block_length=a,
                                                    steps=a),
                    budget=None if rl.budget is None else min(rl.budget, a))
        return dataclasses.replace(self, rl=rl.resolved())


# ------------------------------------------------------------------------------ pieces
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


def make_sft_loss(cfg: SFTConfig, prompt_length: int):
    """``loss_fn(model, batch, key)`` for the train step: the registry loss of ``cfg.loss`` on
    ``batch = {tokens, response_mask, attention_mask?}`` (prompt in the first
    ``prompt_length`` columns)."""
    spec = obj.get_loss(cfg.loss)
    loss_cfg = cfg.loss_config()

    def loss_fn(model, batch, key):
        graphdef, state = nnx.split(model)
        frozen = jax.lax.stop_gradient(nnx.to_pure_dict(state))
        sft = obj.SFTBatch(
            tokens_BL=batch["tokens"], response_mask_BL=batch["response_mask"], key=key,
            mask_id=model.config.mask_token_id, prompt_length=prompt_length,
            attention=lambda n: agdo_order(graphdef, frozen, batch["tokens"], prompt_length, n,
                                           batch.get("attention_mask")))
        rows = spec.rows(sft, loss_cfg)
        logp = obj.token_logprobs(obj.aligned(model, rows["inputs"], batch.get("attention_mask")),
                                  rows["tokens"])
        return spec.loss(loss_cfg, logp, rows)

    return loss_fn


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


def task_generation(task: str | None) -> dict[str, int] | None:
    """A built-in task's answer decoded one token per step, as the demo evaluates it."""
    if task is None:
        return None
    a = get_puzzle(task).answer_length
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
                      task_generation(prog.data.task))


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


def rollout_batcher(rl: RLConfig, source: DataSource, seed: int) -> RolloutBatcher:
    """The RL program's rollouts from ``source``: ``rl.prompts_per_step`` distinct prompts per
    RL step (a pure function of the seed and the step) with their attention masks, G rollouts
    each, scored by the source's rewards. Call ``attach(trainer)`` before use."""

    def rows(step: int) -> np.ndarray:
        return np.random.default_rng([seed, 7, step]).choice(
            source.num_prompts, rl.prompts_per_step, replace=False)

    def reward_fn(step: int, rollouts: np.ndarray, completions: np.ndarray) -> np.ndarray:
        return source.rewards(rows(step)[rollouts // rl.group_size], completions)

    return RolloutBatcher(rl, lambda s: source.prompts(rows(s)), reward_fn, seed=seed,
                          prompt_mask_fn=lambda s: source.prompt_mask(rows(s)))
