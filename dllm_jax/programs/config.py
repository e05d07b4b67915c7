"""The training programs' configs, side by side: a program is a frozen dataclass (model, data,
train and an ``sft`` or ``rl`` section); the YAML file and ``--set`` items override its fields
(unknown keys are errors). ``sft.loss`` / ``rl.loss`` name a loss of the registry
(``dllm_jax.objectives.registry``) and every loss knob left unset takes that loss's published
default: :meth:`SFTProgram.resolved` / :meth:`RLProgram.resolved` fill them in once per run
(the resolved program is printed and saved as ``config.yaml`` beside the checkpoints).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dllm_jax import objectives as obj
from dllm_jax.errors import ConfigError
from dllm_jax.objectives import registry
from dllm_jax.programs.datasources import REWARDS
from dllm_jax.sampling import LLaDAConfig
from dllm_jax.tasks import Puzzle, get_puzzle
from dllm_jax.train.config import CheckpointConfig, OptimConfig, TrainConfig


def _declares_knobs(cls: type, knobs: tuple[str, ...]) -> type:
    """``cls``, checked to have a field for every loss knob of its program (a loss added to
    the registry with a new knob needs one here: the CLI, YAML and docs read these fields)."""
    missing = [k for k in knobs if k not in {f.name for f in dataclasses.fields(cls)}]
    if missing:
        raise TypeError(f"{cls.__name__} has no field for the registry's loss knobs {missing}")
    return cls


SFT_KNOBS = registry.knob_names("sft")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """The SFT program's loss (the ``sft`` section): ``loss`` names an SFT loss of the registry
    (``sft``: LLaDA's masked-diffusion SFT; ``agdo_sft``: AGDO's attention-ordered, influence
    weighted SFT). A knob left None takes the chosen loss's published default (see
    :meth:`resolved` and docs/objectives.md); a knob the loss does not have is an error.

    Attributes:
      loss: ``sft`` | ``agdo_sft``.
      eps: ``sft``'s minimum masking probability.
      gamma, n_per_step: ``agdo_sft``'s weight strength and tokens per attention-order step.
    """

    loss: str = "sft"
    eps: float | None = None
    gamma: float | None = None
    n_per_step: int | None = None

    def __post_init__(self):
        self.loss_config()

    def knobs(self) -> dict:
        return {k: getattr(self, k) for k in SFT_KNOBS}

    def loss_config(self):
        """The loss's config: the knobs that are set over its published defaults."""
        return registry.config_for("sft", self.loss, self.knobs())

    def resolved(self) -> SFTConfig:
        """This config with every knob of the loss filled in (what a run uses and prints)."""
        return dataclasses.replace(self, **registry.resolved_knobs(self.loss_config(),
                                                                   self.knobs()))


_declares_knobs(SFTConfig, SFT_KNOBS)

# RLConfig fields that are knobs of the losses' configs (None: the loss's published default).
# (``shrinkage`` is not one: ``rl.budget`` sets the number of states directly.)
LOSS_KNOBS = tuple(k for k in registry.knob_names("rl") if k != "shrinkage")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLConfig:
    """Knobs of one RL run (the optimiser lives in ``TrainConfig.optim``).

    Every loss knob left None takes the chosen loss's published default from the registry
    (:meth:`resolved` fills them in; docs/objectives.md lists them); setting a knob the loss
    does not have is an error.

    Attributes:
      prompts_per_step, group_size: rollouts per step = prompts * G.
      loss: an RL loss of the registry: ``tracerl`` | ``agdo_rl`` | ``diffu_grpo`` | ``wd1``.
      selector: for losses over selected states (``tracerl``): ``uniform`` (default) |
        ``random`` | ``entropy`` | ``roec`` | ``cm`` | ``atpo``.
      budget: K trajectory states per rollout (the same for every selector; default
        ``ceil(T / shrinkage)`` of the loss); only for losses over states.
      lam, rho: ATPO's hybrid weight and optional coverage mix.
      inner_iterations: ``mu`` optimiser steps per batch of rollouts.
      eps, beta: PPO clip and KL weight (``beta > 0`` keeps a frozen reference model, synced
        every ``ref_sync_every`` RL steps; 0 = never).
      delta, n_per_step: AGDO's advantage boost and tokens per attention-order step (AGDO-RL
        rolls out in that order, so ``n_per_step`` must be the sampler's tokens per step).
      advantage: ``zscore`` or ``center``.
      p_mask_prompt: prompt masking rate of d1's one-step estimator.
      sampler: rollout sampler (temperature > 0 for exploration); a loss that fixes the
        decoding order replaces its rule (AGDO-RL: ``max_s``, see :meth:`resolved`).
    """

    prompts_per_step: int = 8
    group_size: int = 8
    loss: str = "tracerl"
    selector: str | None = None
    budget: int | None = None
    lam: float = 0.5
    rho: float | None = None
    inner_iterations: int | None = None
    eps: float | None = None
    beta: float | None = None
    ref_sync_every: int = 0
    delta: float | None = None
    n_per_step: int | None = None
    advantage: str | None = None
    p_mask_prompt: float | None = None
    sampler: LLaDAConfig = LLaDAConfig(steps=8, gen_length=8, block_length=8, temperature=1.0)

    def __post_init__(self):
        cfg = self.loss_config()  # checks the loss name and the knobs
        spec = obj.get_loss(self.loss)
        if self.budget is not None and spec.state_steps is None:
            raise ValueError(f"rl.budget does not apply to loss {self.loss!r} (one row per "
                             "rollout)")
        if self.selector is not None:
            if not spec.selector:
                raise ValueError(f"rl.selector does not apply to loss {self.loss!r}")
            obj.get_selector(self.selector)
        if self.prompts_per_step < 1 or self.group_size < 2:
            raise ValueError("rl.prompts_per_step must be >= 1 and rl.group_size >= 2")
        if self.budget is not None:
            most = spec.state_steps(cfg, self.sampler.steps, self.sampler.gen_length)
            if not 1 <= self.budget <= most:
                raise ValueError(f"rl.budget must be in [1, {most}] (the steps loss "
                                 f"{self.loss!r} draws states from), got {self.budget}")

    def knobs(self) -> dict:
        return {k: getattr(self, k) for k in LOSS_KNOBS}

    def loss_config(self):
        """The loss's config: the knobs that are set over its published defaults."""
        return obj.config_for("rl", self.loss, self.knobs())

    def resolved(self) -> RLConfig:
        """This config with the loss's knobs, the budget, the selector and the rollout
        sampler filled in (what a run uses and prints); idempotent.

        Raises:
          ConfigError: the sampler does not fit the loss's decoding order (AGDO-RL:
            ``n_per_step`` tokens per step).
        """
        spec = obj.get_loss(self.loss)
        cfg = self.loss_config()
        budget, selector, sampler = self.budget, self.selector, self.sampler
        if spec.state_steps is not None and budget is None:
            budget = spec.default_budget(cfg, sampler.steps, sampler.gen_length)
        if spec.selector and selector is None:
            selector = "uniform"
        if spec.rollout_sampler is not None:
            sampler = spec.rollout_sampler(sampler, cfg)
        return dataclasses.replace(self, budget=budget, selector=selector, sampler=sampler,
                                   **obj.resolved_knobs(cfg, self.knobs()))

    def check_resolved(self) -> RLConfig:
        """This config, which must be :meth:`resolved` (a run resolves its program once and
        passes the result down: the rollouts and the loss refuse anything else).

        Raises:
          ConfigError: a loss knob, the budget, the selector or the rollout sampler is not
            what :meth:`resolved` gives.
        """
        if self.resolved() != self:
            raise ConfigError("pass the resolved RL config (RLConfig.resolved(), which "
                              "RLProgram.resolved() calls) to the rollouts and the loss")
        return self

    def _filled(self) -> RLConfig:
        spec = obj.get_loss(self.loss)
        own = {f.name for f in dataclasses.fields(spec.config)}
        if (any(getattr(self, k) is None for k in LOSS_KNOBS if k in own)
                or (spec.state_steps is not None and self.budget is None)):
            raise ConfigError("this RLConfig property needs the resolved config "
                              "(RLConfig.resolved())")
        return self

    @property
    def rows_per_rollout(self) -> int:
        """Training rows per rollout of a resolved config: K states, or 1 for one-step
        losses."""
        return self._filled().budget or 1

    @property
    def keeps_reference(self) -> bool:
        """Whether the loss of a resolved config has a KL term, i.e. a frozen reference model
        (``beta > 0``)."""
        return (self._filled().beta or 0.0) > 0


_declares_knobs(RLConfig, LOSS_KNOBS)


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

    def puzzle(self) -> Puzzle:
        """The built-in task as configured (its options can change the answer's length)."""
        if self.task is None:
            raise ValueError("data.path holds records, not a built-in task")
        return get_puzzle(self.task, **task_options(self.task_options))


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
            a = self.data.puzzle().answer_length
            if rl.sampler.gen_length != a:
                rl = dataclasses.replace(
                    rl, sampler=dataclasses.replace(rl.sampler, gen_length=a, block_length=a,
                                                    steps=a),
                    budget=None if rl.budget is None else min(rl.budget, a))
        return dataclasses.replace(self, rl=rl.resolved())


