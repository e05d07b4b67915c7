"""The RL sanity check: each RL loss, from one freshly initialised model, on the label-free
``digitsum`` task (``dllm_jax.tasks.digitsum``), must raise the mean rollout reward from its
start to a set level within a bounded number of RL steps (docs/training.md, "RL sanity check").

Every loss runs the RL program (:func:`~dllm_jax.programs.run_rl`) with the same model
seed, prompts and rollout keys and the same learning rate; the loss knobs keep their published
defaults except the inner iterations, which are set to one for every loss so that each loss
gets the same number of updates (d1's 12 would give diffu-GRPO twelve times as many).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from dllm_jax import programs
from dllm_jax.programs.config import DataSpec, ModelSpec, RLConfig, RLProgram
from dllm_jax.sampling import LLaDAConfig
from dllm_jax.tasks.digitsum import DigitSum
from dllm_jax.train.config import CheckpointConfig, OptimConfig, TrainConfig

# The per-step metrics every RL run logs (metrics.jsonl), summarised per RL step.
RL_METRICS = ("reward", "zero_var_groups", "kl", "clip_frac", "update_norm", "grad_norm",
              "loss")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SanityConfig:
    """Sizes of the sanity check (``quick``: the test suite's)."""

    rl_steps: int = 60
    prompts: int = 8
    group: int = 8
    lr: float = 3e-3
    hidden_size: int = 64
    num_layers: int = 2
    seed: int = 0
    level: float = 0.6  # mean reward of the last 10 RL steps every loss must reach
    window: int = 10

    @classmethod
    def quick(cls) -> SanityConfig:
        return cls(rl_steps=40, prompts=4, group=8, hidden_size=32, num_layers=1)


def sanity_program(cfg: SanityConfig, loss: str, out: Path) -> RLProgram:
    """The RL program of one loss: a new character model on ``digitsum``, rollouts at
    temperature 1, one token per step, one inner iteration."""
    a = DigitSum().answer_length
    rl = RLConfig(loss=loss, prompts_per_step=cfg.prompts, group_size=cfg.group,
                  inner_iterations=1,
                  sampler=LLaDAConfig(steps=a, gen_length=a, block_length=a, temperature=1.0))
    train = TrainConfig(seed=cfg.seed, steps=cfg.rl_steps, batch_size=1, log_every=1,
                        optim=OptimConfig(lr=cfg.lr, total_steps=cfg.rl_steps,
                                          schedule="constant", warmup_steps=0),
                        checkpoint=CheckpointConfig(every=cfg.rl_steps, keep=1))
    return RLProgram(out=str(out), model=ModelSpec(hidden_size=cfg.hidden_size,
                                                   num_layers=cfg.num_layers),
                     data=DataSpec(task="digitsum", num_train=2000), train=train, rl=rl)


def rl_curve(run_dir: Path, inner_iterations: int = 1) -> dict[str, list[float]]:
    """Per RL step, the mean of each logged metric over its inner iterations (from
    ``metrics.jsonl``; a metric a loss does not log is absent)."""
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    out: dict[str, list[float]] = {}
    for name in RL_METRICS:
        vals = [r[name] for r in rows if name in r]
        if len(vals) == len(rows) and vals:
            v = np.asarray(vals, np.float64)
            out[name] = v[: len(v) // inner_iterations * inner_iterations].reshape(
                -1, inner_iterations).mean(1).tolist()
    return out


def run_sanity(cfg: SanityConfig, losses: list[str], out: Path) -> dict[str, Any]:
    """Runs every loss in ``losses``; returns, per loss, the first and last ``window`` steps'
    mean reward, whether the last reached ``cfg.level``, the per-step curves and seconds."""
    res: dict[str, Any] = {"config": dataclasses.asdict(cfg), "losses": {}}
    for loss in losses:
        t0 = time.perf_counter()
        run = Path(out) / loss
        programs.run_rl(sanity_program(cfg, loss, run), overwrite=True, progress=False,
                        mesh=None)
        curve = rl_curve(run)
        r = np.asarray(curve["reward"])
        first, last = float(r[:cfg.window].mean()), float(r[-cfg.window:].mean())
        res["losses"][loss] = {"first10": first, "last10": last, "reached": last >= cfg.level,
                               "seconds": time.perf_counter() - t0, "curve": curve}
    return res
