"""``dllm-jax demo``: the whole path on a CPU, a thin program over the training programs.

The demo trains a small masked-diffusion transformer from scratch on a built-in task (the SFT
program, stopped early so there is room for RL), samples with low-confidence and random
remasking, records trajectories and measures how well confusion-zone statistics predict
correctness, runs the RL program from the SFT checkpoint with the uniform selector, with ATPO
at the same budget and seed, and with AGDO (whose rollouts decode in its attention-guided
``max_s`` order), and writes everything (checkpoints, metrics, plots, ``report.md``,
``results.json``) under one directory. Every model is evaluated with low-confidence and random
remasking; the SFT model and the AGDO-trained one also with ``max_s``, the order AGDO trains
in.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from dllm_jax import programs
from dllm_jax.analysis.plot import plot_trajectory
from dllm_jax.analysis.zones import zone_report
from dllm_jax.programs.config import DataSpec, ModelSpec, RLConfig, RLProgram, SFTProgram
from dllm_jax.programs.datasources import TaskSource
from dllm_jax.programs.evaluate import evaluate
from dllm_jax.sampling import LLaDAConfig
from dllm_jax.tasks import get_puzzle
from dllm_jax.train.config import CheckpointConfig, OptimConfig, TrainConfig
from dllm_jax.weights.convert import from_pretrained

METHODS = ("sft", "rl_uniform", "rl_atpo", "rl_agdo")
RULES = ("low_confidence", "random")
ATTENTION_RULE = "max_s"  # AGDO's attention-guided order
# The decoding rules each method is evaluated with: AGDO-RL trains on its own max_s order, so
# its model (and the SFT model it starts from, for comparison) is decoded that way too.
EVAL_RULES = {m: RULES + ((ATTENTION_RULE,) if m in ("sft", "rl_agdo") else ())
              for m in METHODS}
# The RL runs: the loss and what differs from its published defaults.
RL_METHODS = {"rl_uniform": dict(loss="tracerl", selector="uniform"),
              "rl_atpo": dict(loss="tracerl", selector="atpo"),
              "rl_agdo": dict(loss="agdo_rl", delta=5.0)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Sizes of one demo run (``quick`` shrinks everything for the test suite)."""

    task: str = "addition"
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    sft_steps: int = 1500  # at most; SFT stops once validation accuracy reaches the target
    sft_batch: int = 256
    sft_lr: float = 1e-3
    sft_target_accuracy: float = 0.3  # stop early so there is room for RL to show gains
    sft_check_every: int = 100
    num_train: int = 20000
    num_test: int = 256
    rl_steps: int = 60
    rl_prompts: int = 16
    rl_group: int = 8
    rl_budget: int = 2
    rl_lr: float = 1e-4
    rl_temperature: float = 1.0

    @classmethod
    def quick(cls, **kw) -> DemoConfig:
        base = dict(hidden_size=64, num_layers=2, num_heads=4, sft_steps=1200, sft_batch=128,
                    sft_lr=3e-3, num_train=4000, num_test=256, rl_steps=30, rl_prompts=8,
                    rl_group=4)
        base.update(kw)
        return cls(**base)


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _train_config(steps: int, batch: int, lr: float, seed: int, every: int) -> TrainConfig:
    return TrainConfig(seed=seed, steps=steps, batch_size=batch, log_every=max(steps // 20, 1),
                       optim=OptimConfig(lr=lr, total_steps=steps, schedule="constant",
                                         warmup_steps=min(50, steps // 10), weight_decay=0.01),
                       checkpoint=CheckpointConfig(every=every, keep=1))


def sft_program(cfg: DemoConfig, out: Path) -> SFTProgram:
    """The demo's SFT run as an ``SFTProgram`` (the default ``sft`` loss)."""
    return SFTProgram(out=str(out),
                      model=ModelSpec(hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                                      num_heads=cfg.num_heads),
                      data=DataSpec(task=cfg.task, num_train=cfg.num_train),
                      train=_train_config(cfg.sft_steps, cfg.sft_batch, cfg.sft_lr, cfg.seed,
                                          every=cfg.sft_check_every))


def rl_program(cfg: DemoConfig, method: str, init: Path, out: Path) -> RLProgram:
    """The demo's RL run ``method`` from the SFT checkpoint ``init`` as an ``RLProgram``; the
    loss knobs not named in :data:`RL_METHODS` keep the loss's published defaults."""
    a = get_puzzle(cfg.task).answer_length
    rl = RLConfig(prompts_per_step=cfg.rl_prompts, group_size=cfg.rl_group,
                  budget=min(cfg.rl_budget, a),
                  sampler=LLaDAConfig(steps=a, gen_length=a, block_length=a,
                                      temperature=cfg.rl_temperature), **RL_METHODS[method])
    return RLProgram(out=str(out), model=ModelSpec(init=str(init)),
                     data=DataSpec(task=cfg.task, num_train=cfg.num_train),
                     train=_train_config(cfg.rl_steps, 1, cfg.rl_lr, cfg.seed,
                                         every=max(cfg.rl_steps, 1)), rl=rl)


def sft_phase(cfg: DemoConfig, out: Path) -> tuple[Any, dict[str, float]]:
    """SFT through :func:`~dllm_jax.programs.run_sft`, asked every ``sft_check_every``
    steps to stop once the validation accuracy (train-pool puzzles drawn with another seed,
    greedy low-confidence decoding) reaches the target. Returns the model and the last check
    (``steps``, validation ``accuracy``)."""
    val = TaskSource.validation(cfg.task, cfg.seed, 256)
    t0 = time.perf_counter()
    seen = {"steps": 0, "accuracy": 0.0}

    def stop(model, step: int, last: dict[str, float]) -> bool:
        acc = evaluate(model, val, "low_confidence", seed=cfg.seed)[0]
        seen.update(steps=step, accuracy=acc)
        _log(f"SFT step {step}: loss {last.get('loss', float('nan')):.4f}, validation "
             f"accuracy {acc:.3f} ({time.perf_counter() - t0:.0f}s)")
        return acc >= cfg.sft_target_accuracy

    model_dir = programs.run_sft(sft_program(cfg, out), overwrite=True, stop=stop, mesh=None)
    reached = seen["accuracy"] >= cfg.sft_target_accuracy
    _log(f"SFT stopped after {seen['steps']} steps ({time.perf_counter() - t0:.0f}s), "
         f"validation accuracy {seen['accuracy']:.3f} (target {cfg.sft_target_accuracy}: "
         f"{'reached' if reached else 'NOT reached'})")
    return from_pretrained(model_dir), seen


def rl_phase(cfg: DemoConfig, method: str, init: Path, out: Path):
    """RL ``method`` through :func:`~dllm_jax.programs.run_rl`; returns the model."""
    t0 = time.perf_counter()
    model_dir = programs.run_rl(rl_program(cfg, method, init, out), overwrite=True, mesh=None)
    rewards = [json.loads(x).get("reward") for x in (out / "metrics.jsonl").read_text()
               .splitlines()]
    k = max(1, min(10, len(rewards) // 3))
    _log(f"{method}: {cfg.rl_steps} RL steps in {time.perf_counter() - t0:.0f}s; mean rollout "
         f"reward of the first / last {k} steps {np.mean(rewards[:k]):.3f} -> "
         f"{np.mean(rewards[-k:]):.3f}")
    return from_pretrained(model_dir)


def run_demo(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _log(f"config: {dataclasses.asdict(cfg)}")
    test = TaskSource(cfg.task, cfg.seed, cfg.num_test, split="test")
    _log(f"task {cfg.task}: {cfg.num_train} train / {test.num_prompts} held-out examples, "
         f"prompt {test.prompt_length} + answer {test.answer_length} tokens; e.g. "
         f"{test.examples[0].prompt!r} -> {test.examples[0].answer!r}")
    model, seen = sft_phase(cfg, out / "sft")
    results: dict[str, Any] = {"task": cfg.task, "seed": cfg.seed,
                               "config": dataclasses.asdict(cfg), "sft_steps": seen["steps"],
                               "sft_validation": seen["accuracy"],
                               "sft_target_reached": seen["accuracy"] >= cfg.sft_target_accuracy,
                               "accuracy": {}}
    _, correct, traj = evaluate(model, test, "low_confidence", record=True, seed=cfg.seed)
    scores = {"sft": {"low_confidence": correct, **{
        r: evaluate(model, test, r, seed=cfg.seed)[1] for r in EVAL_RULES["sft"][1:]}}}
    results["accuracy"]["sft"] = {r: float(c.mean()) for r, c in scores["sft"].items()}
    _log(f"SFT held-out accuracy: {results['accuracy']['sft']}")
    zones = zone_report(traj, correct)
    wrong = int(np.argmin(correct)) if not correct.all() else 0
    plot_trajectory(traj, str(out / "confusion_zones.png"), row=wrong,
                    title=f"{cfg.task}: held-out item {wrong} "
                          f"({'correct' if correct[wrong] else 'wrong'})")
    results["zones"] = zones
    _log(f"confusion zones: {zones['mean_num_zones']:.2f} per trajectory, "
         f"AUC for predicting correctness: "
         + ", ".join(f"{k} {v:.2f}" for k, v in zones["auc"].items()))
    for method in METHODS[1:]:
        rl_model = rl_phase(cfg, method, out / "sft" / "model", out / method)
        scores[method] = {r: evaluate(rl_model, test, r, seed=cfg.seed)[1]
                          for r in EVAL_RULES[method]}
        results["accuracy"][method] = {r: float(c.mean()) for r, c in scores[method].items()}
        _log(f"{method} held-out accuracy: {results['accuracy'][method]}")
    results["intervals"] = intervals(scores, cfg.seed)
    results["seconds"] = time.perf_counter() - t_start
    results["machine"] = f"{platform.machine()}, python {platform.python_version()}"
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(report_markdown(results))
    return results


def intervals(scores: dict[str, dict[str, np.ndarray]], seed: int) -> dict[str, Any]:
    """Per method and rule, the accuracy's 95% bootstrap interval over the test puzzles and
    the paired difference to the SFT model in the same rule (same puzzles) with its
    interval."""
    from dllm_jax.eval.stats import boot_mean, paired  # SciPy: only once there are results

    out: dict[str, Any] = {"accuracy": {}, "vs_sft": {}}
    for m, by_rule in scores.items():
        out["accuracy"][m] = {r: boot_mean(c.astype(float), 2000, seed)["ci95"]
                              for r, c in by_rule.items()}
        if m != "sft":
            out["vs_sft"][m] = {r: paired(c.astype(float) - scores["sft"][r], None, 2000, seed)
                                for r, c in by_rule.items() if r in scores["sft"]}
    return out


def report_markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    target = ("reached" if res["sft_target_reached"] else "**not reached**: SFT ran out of "
              "steps first")
    iv = res["intervals"]
    lines = [f"# dllm-jax demo: {res['task']}", "",
             f"Seed {res['seed']}; {res['seconds']:.0f} s on {res['machine']}. SFT stopped after "
             f"{res['sft_steps']} steps at validation accuracy {res['sft_validation']:.3f} "
             f"(target {cfg['sft_target_accuracy']}: {target}). Held-out accuracy (exact "
             f"answer) over {cfg['num_test']} puzzles, greedy decoding, one token per step, "
             "with its 95% bootstrap interval over the puzzles; for the RL models also the "
             "paired difference to the SFT model in the same order (same puzzles) and its "
             "interval. The intervals cover test-set noise only (one seed).", "",
             "| method | low_confidence | random | max_s |", "|---|---|---|---|"]

    def cell(m: str, r: str) -> str:
        if r not in res["accuracy"][m]:
            return "-"
        lo, hi = iv["accuracy"][m][r]
        text = f"{res['accuracy'][m][r]:.3f} [{lo:.3f}, {hi:.3f}]"
        if m in iv["vs_sft"] and r in iv["vs_sft"][m]:
            d = iv["vs_sft"][m][r]
            text += f"; {d['mean_diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        return text

    for m in METHODS:
        lines.append(f"| {m} | " + " | ".join(cell(m, r) for r in (*RULES, ATTENTION_RULE))
                     + " |")
    z = res["zones"]
    lines += ["", f"RL: {cfg['rl_steps']} steps, {cfg['rl_prompts']} prompts x "
              f"{cfg['rl_group']} rollouts, budget {cfg['rl_budget']} states per rollout "
              "(uniform = TraceRL grouping, atpo = hybrid RoEC+CM rule, same budget and seed; "
              "agdo = rollouts decoded in the attention-guided max_s order, states following it, "
              "delta 5; max_s evaluates in that order).", "",
              "## Confusion zones", "",
              f"Mean zones per trajectory {z['mean_num_zones']:.2f}, mean fraction of steps "
              f"in a zone {z['mean_zone_fraction']:.2f}. AUC of each statistic for predicting "
              "a correct answer (0.5 = no signal):", "",
              "| statistic | AUC |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in z["auc"].items()]
    lines += ["", "![confusion zones](confusion_zones.png)", "",
              "Numbers are what this run measured; they are not tuned to favour any method.", ""]
    return "\n".join(lines)
