"""The training programs behind ``dllm-jax train sft|rl``.

A program is a frozen dataclass (model, data, train and, for RL, rl sections); the YAML file and
``--set`` items override its fields (unknown keys are errors). The resolved config is printed
and saved as ``config.yaml`` beside the checkpoints; the final model is written as a dllm-jax
checkpoint to ``<out>/model`` (with its tokenizer for built-in tasks).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from dllm_jax.errors import ConfigError
from dllm_jax.train.rl import RLConfig
from dllm_jax.train import CheckpointConfig, OptimConfig, TrainConfig


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
    ``reward`` (exact | gsm8k | math)."""

    task: str | None = "addition"
    path: str | None = None
    split: str = "train"
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    reward: str = "exact"
    tokenizer: str | None = None
    chat_template: bool = True
    num_train: int = 20000
    max_prompt_length: int = 256
    max_answer_length: int = 256

    def __post_init__(self):
        if (self.task is None) == (self.path is None):
            raise ValueError("set exactly one of data.task and data.path")
        if self.reward not in ("exact", "gsm8k", "math"):
            raise ValueError(f"data.reward must be exact, gsm8k or math, got {self.reward!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTProgram:
    out: str = "out/sft"
    eps: float = 1e-3
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    train: TrainConfig = TrainConfig(steps=600, batch_size=256, log_every=20,
                                     optim=OptimConfig(lr=1e-3, total_steps=600, warmup_steps=50,
                                                       weight_decay=0.01),
                                     checkpoint=CheckpointConfig(every=200, keep=2))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLProgram:
    out: str = "out/rl"
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    train: TrainConfig = TrainConfig(steps=40, batch_size=1, log_every=1,
                                     optim=OptimConfig(lr=2e-5, total_steps=40,
                                                       schedule="constant"),
                                     checkpoint=CheckpointConfig(every=10, keep=2))
    rl: RLConfig = RLConfig()


# ------------------------------------------------------------------------------ data
class FileData:
    """Records of a file / HF dataset, tokenized with an HF (or saved character) tokenizer."""

    def __init__(self, spec: DataSpec, tokenizer: Any, eos_id: int, pad_id: int):
        from dllm_jax.data.records import encode_sft, load_records

        self.spec = spec
        self.records = load_records(spec.path, spec.split, (spec.prompt_field, spec.answer_field))
        self.tokenizer = tokenizer
        self.enc = encode_sft(self.records, tokenizer, prompt_field=spec.prompt_field,
                              answer_field=spec.answer_field,
                              max_prompt_length=spec.max_prompt_length,
                              max_answer_length=spec.max_answer_length,
                              chat_template=spec.chat_template, eos_id=eos_id, pad_id=pad_id)
        self.p_len = int((self.enc["response_mask"][0] == 0).sum())
        self.a_len = self.enc["tokens"].shape[1] - self.p_len

    def reward(self, index: int, completion: str) -> float:
        from dllm_jax.tasks import answers as rewards

        gold = str(self.records[index][self.spec.answer_field])
        if self.spec.reward == "gsm8k":
            return rewards.gsm8k_reward(completion, gold)
        if self.spec.reward == "math":
            return rewards.math_reward(completion, gold)
        return float(completion.strip() == gold.strip())


def _model_and_data(model_spec: ModelSpec, data: DataSpec, seed: int):
    """(model, data object, tokenizer) for a program."""
    import dllm_jax
    from dllm_jax.train.demo import TaskData
    from dllm_jax.model.transformer import init_model

    if data.task is not None:
        td = TaskData(data.task, seed, data.num_train, 256)
        if model_spec.init is not None:
            model = dllm_jax.from_pretrained(model_spec.init, dtype=model_spec.dtype)
        else:
            from dllm_jax.tasks import model_config

            model = init_model(model_config(td.tok, hidden_size=model_spec.hidden_size,
                                            num_layers=model_spec.num_layers,
                                            num_heads=model_spec.num_heads), seed=seed)
        return model, td, td.tok
    if model_spec.init is None:
        raise ConfigError("training on data.path needs model.init (a checkpoint directory)")
    from dllm_jax.data.tokenizer import load_tokenizer

    model = dllm_jax.from_pretrained(model_spec.init, dtype=model_spec.dtype)
    tok = load_tokenizer(data.tokenizer or model_spec.init)
    cfg = model.config
    fd = FileData(data, tok, cfg.eos_token_id, cfg.pad_token_id or cfg.eos_token_id)
    return model, fd, tok


def _sft_batch_fn(data, batch: int, seed: int):
    from dllm_jax.data.records import batch_rows

    if hasattr(data, "sft_batch_fn"):
        return data.sft_batch_fn(batch, seed)
    enc = data.enc
    n = enc["tokens"].shape[0]
    return lambda step: {k: v[batch_rows(n, batch, seed, step)] for k, v in enc.items()}


def _save_final(model, tokenizer, out: Path) -> Path:
    from dllm_jax.weights.convert import save_checkpoint

    target = out / "model"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    save_checkpoint(model, target)
    if hasattr(tokenizer, "save"):
        tokenizer.save(target)
    elif hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(target))
    return target


def run_sft(prog: SFTProgram, resume: bool = False, progress: bool = True) -> Path:
    from dllm_jax.train.overrides import to_dict
    from dllm_jax.train import Trainer, sft_objective

    model, data, tok = _model_and_data(prog.model, prog.data, prog.train.seed)
    loss = functools.partial(sft_objective, eps=prog.eps)
    trainer = Trainer(prog.train, model, loss, _sft_batch_fn(data, prog.train.batch_size,
                                                             prog.train.seed),
                      prog.out, extra_config={"program": to_dict(prog)}, progress=progress)
    trainer.run(resume=resume)
    return _save_final(trainer.model, tok, Path(prog.out))


def run_rl(prog: RLProgram, resume: bool = False, progress: bool = True) -> Path:
    from dllm_jax.train.overrides import to_dict
    from dllm_jax.train.rl import RolloutBatcher, make_rl_loss
    from dllm_jax.train import Trainer

    rl = prog.rl
    if prog.train.checkpoint.every % rl.inner_iterations:
        raise ConfigError(f"train.checkpoint.every ({prog.train.checkpoint.every}) must be a "
                          f"multiple of rl.inner_iterations ({rl.inner_iterations}) so a resumed "
                          "run re-creates the same rollouts")
    model, data, tok = _model_and_data(prog.model, prog.data, prog.train.seed)
    if rl.sampler.gen_length != data.a_len and prog.data.task is not None:
        rl = dataclasses.replace(rl, sampler=dataclasses.replace(
            rl.sampler, gen_length=data.a_len, block_length=data.a_len, steps=data.a_len),
            budget=min(rl.budget, data.a_len))
    prompts = data.train_prompt if hasattr(data, "train_prompt") else data.enc["tokens"][
        :, :data.p_len]
    n = prompts.shape[0]

    def rows(step: int) -> np.ndarray:
        return np.random.default_rng([prog.train.seed, 7, step]).choice(
            n, rl.prompts_per_step, replace=False)

    def reward_fn(step: int, completions: np.ndarray) -> np.ndarray:
        idx = np.repeat(rows(step), rl.group_size)
        texts = [tok.decode([int(t) for t in c]) for c in completions]
        if hasattr(data, "rewards"):
            return data.rewards([data.train[i] for i in idx], completions)
        return np.asarray([data.reward(int(i), t) for i, t in zip(idx, texts, strict=True)])

    batcher = RolloutBatcher(rl, lambda s: prompts[rows(s)], reward_fn, seed=prog.train.seed)
    trainer = Trainer(prog.train, model, make_rl_loss(rl, rl.prompts_per_step * rl.group_size),
                      batcher, prog.out, extra_config={"program": to_dict(prog)},
                      progress=progress)
    batcher.attach(trainer)
    trainer.run(resume=resume)
    return _save_final(trainer.model, tok, Path(prog.out))
