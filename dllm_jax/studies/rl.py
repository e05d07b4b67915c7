"""The RL study (docs/studies.md, "RL where it is the right tool"): on a task split so that no
puzzle family crosses parts, SFT on a fixed labelled set until validation accuracy plateaus
(the best validation checkpoint is the start of every arm), then each RL arm on unlabelled
prompts of other families with the verifier's reward, against ``sft_more`` (SFT continued on
the same labelled set for the RL run's compute) — for every (SFT seed, RL seed) unit.

Runs are cached as JSON under the study directory (``sft_s<seed>.json``, ``lr_grid.json``,
``runs/<arm>_s<sft>_r<rl>.json``), so a study stopped at any point continues where it
stopped; the summary (:mod:`dllm_jax.studies.rl_report`) is rebuilt from whatever finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dllm_jax import programs
from dllm_jax.errors import ConfigError
from dllm_jax.programs.config import DataSpec, ModelSpec, RLConfig, RLProgram, SFTProgram
from dllm_jax.programs.datasources import TaskSource
from dllm_jax.programs.evaluate import evaluate
from dllm_jax.programs.sanity import rl_curve
from dllm_jax.sampling import LLaDAConfig
from dllm_jax.train.config import CheckpointConfig, OptimConfig, TrainConfig
from dllm_jax.weights.convert import from_pretrained

# Each RL arm: the loss and what differs from its published defaults (docs/objectives.md).
ARMS: dict[str, dict[str, Any] | None] = {
    "uniform": dict(loss="tracerl", selector="uniform"),  # TraceRL: K merged states
    "sft_more": None,                                     # SFT for uniform's compute (RL steps)
    "agdo": dict(loss="agdo_rl", delta=5.0),               # attention order, boosted advantage
    "atpo": dict(loss="tracerl", selector="atpo"),         # hybrid RoEC + CM steps
    "random": dict(loss="tracerl", selector="random"),     # K random steps (token-matched)
    "uniform_kl0": dict(loss="tracerl", selector="uniform", beta=0.0),  # no KL term
    "uniform_mu12": dict(loss="tracerl", selector="uniform", inner_iterations=12),  # d1's mu
}
RULES = ("low_confidence", "max_s")
# Parts of each task's leak-free split, as task options (``TaskSource(options=...)``).
SPLITS: dict[str, dict[str, dict[str, Any]]] = {
    "sudoku": {p: {"grid_split": p} for p in ("sft", "rl", "val", "test")},
    "countdown": {p: {"number_split": p, "max_number": 20}
                  for p in ("sft", "rl", "val", "test")},
}
# What a task's study changes from the Sudoku-sized defaults of :class:`Design`, from pilot SFT
# runs (docs/studies.md): Countdown needs far more labelled data before greedy accuracy leaves
# zero, and a smaller learning rate (1e-3 plateaued near 0.1 with validation swinging between
# checks; 3e-4 reached 0.33 at step 3000, still rising). Its validation accuracy sits near
# zero for hundreds of steps and then rises with swings of several points (800 steps without a
# new best in that pilot), so the plateau is 1000 steps without a new best.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sudoku": {},
    "countdown": dict(labelled=4000, unlabelled=4000, sft_lr=3e-4, sft_check_every=100,
                      sft_patience=10, sft_max_steps=4000),
}


def rule_of(arm: str) -> str:
    """The decoding order an arm is scored in: AGDO's arm rolls out in attention order."""
    return "max_s" if arm.startswith("agdo") else "low_confidence"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Design:
    """Everything that fixes the study's numbers; seeds and arms may grow between invocations,
    any other change needs a new study directory."""

    task: str = "sudoku"
    sft_seeds: tuple[int, ...] = (0, 1, 2)
    rl_seeds: tuple[int, ...] = (0, 1)
    arms: tuple[str, ...] = tuple(ARMS)
    hidden_size: int = 128
    num_layers: int = 4
    labelled: int = 200          # the fixed labelled set (SFT and sft_more)
    unlabelled: int = 5000       # RL prompts (no answers used: the verifier scores)
    sft_batch: int = 64
    sft_lr: float = 1e-3
    sft_weight_decay: float = 0.01
    sft_check_every: int = 50
    sft_patience: int = 4        # checks without a better validation accuracy
    sft_max_steps: int = 2000
    lr_grid: tuple[float, ...] = (3e-5, 1e-4, 3e-4)
    grid_steps: int = 60
    rl_steps: int = 300
    rl_prompts: int = 8
    rl_group: int = 8
    beta: float = 0.01
    inner: int = 1
    rl_weight_decay: float = 0.0
    rl_check_every: int = 50
    num_val: int = 256
    num_test: int = 1000
    boot: int = 10000

    def __post_init__(self):
        if self.task not in SPLITS:
            raise ConfigError(f"the RL study needs a task with a leak-free split "
                              f"({sorted(SPLITS)}), got {self.task!r}")
        unknown = set(self.arms) - set(ARMS)
        if unknown or "uniform" not in self.arms:
            raise ConfigError(f"arms must include uniform and come from {list(ARMS)}, got "
                              f"{list(self.arms)}")
        if self.rl_check_every % self.inner:
            raise ConfigError("rl_check_every must be a multiple of inner")


def design_for(task: str, **overrides: Any) -> Design:
    """The study's design for ``task``: :data:`TASK_DEFAULTS`, then ``overrides`` (a task
    without a leak-free split is refused by :class:`Design`)."""
    return Design(task=task, **{**TASK_DEFAULTS.get(task, {}), **overrides})


GROWABLE = ("sft_seeds", "rl_seeds", "arms")


def fixed_part(design: dict) -> dict:
    """The design without the fields that may grow (seeds, arms)."""
    return {k: v for k, v in design.items() if k not in GROWABLE}


def design_dict(d: Design) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(d)))


def cached(path: Path, fn: Callable[[], Any]) -> Any:
    """``fn()``'s JSON result, computed once and written atomically."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(fn(), indent=1, allow_nan=False))
        tmp.replace(path)
    return json.loads(path.read_text())


def sources(d: Design) -> dict[str, TaskSource]:
    """Validation (plateau, learning rate) and test (reported once) puzzles."""
    parts = SPLITS[d.task]
    return {"val": TaskSource(d.task, 1, d.num_val, options=parts["val"]),
            "test": TaskSource(d.task, 2, d.num_test, options=parts["test"])}


def _data(d: Design, part: str, n: int) -> DataSpec:
    opts = ",".join(f"{k}={v}" for k, v in SPLITS[d.task][part].items())
    return DataSpec(task=d.task, task_options=opts, num_train=n)


def _train(seed: int, steps: int, batch: int, lr: float, every: int, warmup: int,
           weight_decay: float) -> TrainConfig:
    return TrainConfig(seed=seed, steps=steps, batch_size=batch, log_every=1,
                       optim=OptimConfig(lr=lr, total_steps=steps, schedule="constant",
                                         warmup_steps=warmup, weight_decay=weight_decay),
                       checkpoint=CheckpointConfig(every=every, keep=1))


def step_seconds(run_dir: Path) -> float:
    """Median wall clock of one training step (``metrics.jsonl``, logged every step; the
    steps that compile or evaluate fall out as outliers)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    gaps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:], strict=False)
            if b["step"] == a["step"] + 1 and b["elapsed_s"] > a["elapsed_s"]]
    return float(np.median(gaps))


def test_scores(model, test: TaskSource) -> dict[str, list[int]]:
    """Per-puzzle greedy correctness (0/1) in each decoding order."""
    return {r: evaluate(model, test, r)[1].astype(int).tolist() for r in RULES}


def machine() -> dict[str, Any]:
    """What fixes the numerics of training on this host: the CPU (model and vector
    instruction sets, from ``/proc/cpuinfo`` where there is one) and the JAX version. XLA's CPU
    code follows the instruction sets, so the same program on another CPU rounds differently;
    on 2026-12-07 a Countdown SFT seed rerun on a newer CPU matched its record's loss to 1e-7 at
    step 100 and to 0.5% at step 3700, and its validation accuracy differed (0.332 vs 0.348)."""
    info = {"machine": platform.machine(), "cpu": platform.processor() or platform.machine()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        fields = dict(line.split(":", 1) for line in cpuinfo.read_text().split("\n\n")[0]
                      .splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        f = {k: fields.get(k, "?") for k in ("vendor_id", "model name", "cpu family", "model")}
        info["cpu"] = (f"{f['vendor_id']} {f['model name']} (family {f['cpu family']}, model "
                       f"{f['model']})")
        info["isa"] = sorted(flag for flag in fields.get("flags", "").split()
                             if flag.startswith(("avx", "amx", "fma", "sse4")))
    return {**info, "jax": jax.__version__}


def _sft_program(d: Design, seed: int, out: Path) -> SFTProgram:
    return SFTProgram(out=str(out), model=ModelSpec(hidden_size=d.hidden_size,
                                                    num_layers=d.num_layers),
                      data=_data(d, "sft", d.labelled),
                      train=_train(seed, d.sft_max_steps, d.sft_batch, d.sft_lr,
                                   d.sft_check_every, warmup=50, weight_decay=d.sft_weight_decay))


def _saver(d: Design, seed: int, prog: SFTProgram) -> Callable[[Any, Path], Path]:
    """Saves an SFT start with its tokenizer and the task's generation settings."""
    tok_src, generation = TaskSource(d.task, seed, 1), programs.task_generation(prog.data)
    return lambda model, target: programs.save_model(model, tok_src, target, generation)


def _scores(model_dir: Path, src: dict) -> dict:
    model = from_pretrained(model_dir)
    return {"val": {r: evaluate(model, src["val"], r)[0] for r in RULES},
            "test": test_scores(model, src["test"])}


def run_sft(d: Design, seed: int, out: Path, src: dict, log: Callable[[str], None]) -> dict:
    """SFT seed ``seed`` on the labelled set until ``sft_patience`` checks pass without a
    better validation accuracy; the best checkpoint is kept as ``<out>/best``."""
    curve: list[list[float]] = []
    best = {"acc": -1.0, "step": 0}
    prog = _sft_program(d, seed, out)
    save = _saver(d, seed, prog)

    def stop(model, step: int, last: dict) -> bool:
        acc = evaluate(model, src["val"], "low_confidence")[0]
        curve.append([step, acc, last.get("loss")])
        log(f"SFT seed {seed} step {step}: validation {acc:.3f} (loss {last.get('loss'):.4f})")
        if acc > best["acc"]:
            best.update(acc=acc, step=step)
            save(model, out / "best")
        return step - best["step"] >= d.sft_patience * d.sft_check_every

    t0 = time.perf_counter()
    programs.run_sft(prog, overwrite=True, stop=stop, mesh=None, progress=False)
    return {"model": str(out / "best"), "best_step": best["step"], "best_val": best["acc"],
            "curve": curve, "steps": int(curve[-1][0]), "seconds": time.perf_counter() - t0,
            "step_seconds": step_seconds(out), "machine": machine(),
            **_scores(out / "best", src)}


def rebuild_start(d: Design, seed: int, out: Path, src: dict, record: dict,
                  log: Callable[[str], None]) -> None:
    """Rebuilds the start ``<out>/best`` of a recorded SFT seed whose checkpoint is gone (a
    study's JSON records are small enough to keep in the repository; its checkpoints are not):
    the same SFT program trained to the recorded best step. Training is deterministic on one
    machine, so the rebuilt model must score exactly as recorded on validation and test; a
    model that does not is refused rather than mixed into the study."""
    log(f"SFT seed {seed}: rebuilding the start (step {record['best_step']}) from its record")
    here, there = machine(), record.get("machine")
    if there != here:
        was = f"{there['cpu']}, jax {there['jax']}" if there else "an unrecorded machine"
        log(f"SFT seed {seed} was trained on {was}; this is {here['cpu']}, jax {here['jax']}: "
            "training rounds differently on another CPU or JAX, so the rebuild may not "
            "reproduce it")
    prog = _sft_program(d, seed, out)
    save, tmp = _saver(d, seed, prog), out / "best.tmp"

    def stop(model, step: int, last: dict) -> bool:
        if step >= record["best_step"]:
            save(model, tmp)
        return step >= record["best_step"]

    programs.run_sft(prog, overwrite=True, stop=stop, mesh=None, progress=False)
    got = _scores(tmp, src)
    if got["val"] != record["val"] or got["test"] != record["test"]:
        raise ConfigError(
            f"SFT seed {seed} does not reproduce its record on this machine (validation "
            f"{got['val']} vs recorded {record['val']}; recorded on "
            f"{(there or {}).get('cpu', 'an unrecorded CPU')}, this is {here['cpu']}); continue "
            "the study where it was recorded, or start a new study directory")
    tmp.replace(out / "best")


def arm_knobs(d: Design, arm: str) -> dict[str, Any]:
    """The RL knobs of ``arm``: the design's KL weight and inner iterations, overridden by the
    arm's own (:data:`ARMS`)."""
    return {"beta": d.beta, "inner_iterations": d.inner, **ARMS[arm]}


def rl_program(d: Design, arm: str, init: str, lr: float, steps: int, seed: int, out: Path
               ) -> RLProgram:
    a = _data(d, "rl", 1).puzzle().answer_length
    knobs = arm_knobs(d, arm)
    inner = knobs["inner_iterations"]
    rl = RLConfig(prompts_per_step=d.rl_prompts, group_size=d.rl_group, **knobs,
                  sampler=LLaDAConfig(steps=a, gen_length=a, block_length=a, temperature=1.0))
    every = min(d.rl_check_every, steps) * inner
    return RLProgram(out=str(out), model=ModelSpec(init=init), data=_data(d, "rl", d.unlabelled),
                     train=_train(seed, steps * inner, 1, lr, every, warmup=0,
                                  weight_decay=d.rl_weight_decay), rl=rl)


def run_arm(d: Design, arm: str, start: dict, lr: float, steps: int, seed: int, out: Path,
            src: dict, log: Callable[[str], None], test: bool = True) -> dict:
    """One RL arm from the SFT start: validation accuracy (in the arm's order) every
    ``rl_check_every`` RL steps, per-step metrics, and the test scores."""
    rule, inner = rule_of(arm), arm_knobs(d, arm)["inner_iterations"]
    curve = [[0, start["val"][rule]]]

    def stop(model, step: int, last: dict) -> bool:
        curve.append([step // inner, evaluate(model, src["val"], rule)[0]])
        log(f"{out.name} step {step // inner}: validation {curve[-1][1]:.3f}, "
            f"reward {last.get('reward', float('nan')):.3f}")
        return False

    prog = rl_program(d, arm, start["model"], lr, steps, seed, out)
    t0 = time.perf_counter()
    model_dir = programs.run_rl(prog, overwrite=True, stop=stop, mesh=None, progress=False)
    res = {"lr": lr, "curve": curve, "seconds": time.perf_counter() - t0,
           "step_seconds": step_seconds(out) * inner, "metrics": rl_curve(out, inner),
           "config": json.loads(json.dumps(dataclasses.asdict(prog.resolved().rl)))}
    if test:
        res["test"] = test_scores(from_pretrained(model_dir), src["test"])
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return res


# Step-time calibration of sft_more: short RL and SFT runs from the same start, interleaved.
CALIBRATION = {"rounds": 2, "rl_steps": 10, "sft_steps": 20}


def calibrate(d: Design, start: dict, out: Path, src: dict, log: Callable[[str], None]
              ) -> dict:
    """Median seconds per step of the ``uniform`` RL arm and of SFT from ``start``, measured
    back to back (``CALIBRATION``), so that the ratio is not skewed by a change of machine load
    between the RL run and the SFT run it is matched with."""
    rl, sft = [], []
    for i in range(CALIBRATION["rounds"]):
        rl.append(run_arm(d, "uniform", start, 1e-4, CALIBRATION["rl_steps"], i,
                          out / f"rl_{i}", src, log, test=False)["step_seconds"])
        steps = CALIBRATION["sft_steps"]
        prog = SFTProgram(out=str(out / f"sft_{i}"), model=ModelSpec(init=start["model"]),
                          data=_data(d, "sft", d.labelled),
                          train=_train(i, steps, d.sft_batch, d.sft_lr, steps, warmup=0,
                                       weight_decay=d.sft_weight_decay))
        programs.run_sft(prog, overwrite=True, mesh=None, progress=False)
        sft.append(step_seconds(out / f"sft_{i}"))
    shutil.rmtree(out, ignore_errors=True)
    res = {**CALIBRATION, "rl_step_seconds": rl, "sft_step_seconds": sft,
           "ratio": float(np.median(rl) / np.median(sft))}
    log(f"calibration: one RL step = {res['ratio']:.2f} SFT steps ({rl} s vs {sft} s)")
    return res


def run_sft_more(d: Design, start: dict, ratio: float, seed: int, out: Path, src: dict,
                 log: Callable[[str], None]) -> dict:
    """SFT continued from the start on the labelled set for the compute of ``d.rl_steps`` RL
    steps: ``ratio`` SFT steps per RL step (:func:`calibrate`)."""
    steps = max(1, round(d.rl_steps * ratio))
    every = max(1, math.ceil(steps / 6))
    curve = [[0, start["val"]["low_confidence"]]]

    def stop(model, step: int, last: dict) -> bool:
        curve.append([step, evaluate(model, src["val"], "low_confidence")[0]])
        log(f"{out.name} step {step}/{steps}: validation {curve[-1][1]:.3f}")
        return False

    prog = SFTProgram(out=str(out), model=ModelSpec(init=start["model"]),
                      data=_data(d, "sft", d.labelled),
                      train=_train(seed, steps, d.sft_batch, d.sft_lr, every, warmup=0,
                                   weight_decay=d.sft_weight_decay))
    t0 = time.perf_counter()
    model_dir = programs.run_sft(prog, overwrite=True, stop=stop, mesh=None, progress=False)
    res = {"steps": steps, "sft_steps_per_rl_step": ratio, "curve": curve,
           "seconds": time.perf_counter() - t0, "step_seconds": step_seconds(out),
           "test": test_scores(from_pretrained(model_dir), src["test"])}
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return res


def choose_lr(d: Design, start: dict, out: Path, src: dict, log: Callable[[str], None]
              ) -> dict:
    """The RL learning rate: the ``uniform`` arm for ``grid_steps`` from the first SFT seed's
    start at each rate of the grid, scored on validation (ties: the smaller rate)."""
    scores = {}
    for lr in d.lr_grid:
        r = run_arm(d, "uniform", start, lr, d.grid_steps, 0, out / f"lr_{lr:g}", src, log,
                    test=False)
        scores[f"{lr:g}"] = r["curve"][-1][1]
    lr = max(d.lr_grid, key=lambda x: (scores[f"{x:g}"], -x))
    return {"scores": scores, "lr": lr, "steps": d.grid_steps}


def run_study(d: Design, out: Path, log: Callable[[str], None] = print,
              max_runs: int | None = None) -> dict[str, Any]:
    """Runs (or continues) the study in ``out``; returns the cached results so far:
    ``{"design", "sft": {seed: ...}, "lr": ..., "runs": {"<arm>_s<sft>_r<rl>": ...}}``.
    Arms run in ``d.arms`` order over every unit before the next arm starts, so the first
    arms have every seed first; ``max_runs`` stops after that many new runs."""
    out.mkdir(parents=True, exist_ok=True)
    saved = cached(out / "design.json", lambda: design_dict(d))
    if fixed_part(saved) != fixed_part(design_dict(d)):
        raise ConfigError(f"{out} holds a study of another design (design.json); use a new "
                          "directory or the same settings")
    src = sources(d)
    sft: dict[int, dict] = {}

    def start(s: int) -> dict:
        """SFT seed ``s``'s record, with its checkpoint on disk (trained or rebuilt)."""
        where = out / f"sft_s{s}"
        rec = cached(out / f"sft_s{s}.json", lambda: run_sft(d, s, where, src, log))
        if not (where / "best").exists():
            rebuild_start(d, s, where, src, rec, log)
        sft[s] = {**rec, "model": str(where / "best")}  # the record may have moved
        return sft[s]

    lr = cached(out / "lr_grid.json",
                lambda: choose_lr(d, start(d.sft_seeds[0]), out / "lr_grid", src, log))
    log(f"RL learning rate {lr['lr']:g} (validation after {lr['steps']} steps: "
        f"{lr['scores']})")
    runs: dict[str, dict] = {}
    new = 0
    for arm in d.arms:
        for s in d.sft_seeds:
            for r in d.rl_seeds:
                key = f"{arm}_s{s}_r{r}"
                path = out / "runs" / f"{key}.json"
                if not path.exists() and max_runs is not None and new >= max_runs:
                    continue
                new += not path.exists()
                if arm == "sft_more":
                    cal = cached(out / f"calibration_s{s}.json", lambda s=s: calibrate(
                        d, start(s), out / "calibration", src, log))
                    go = lambda s=s, r=r, key=key, cal=cal: run_sft_more(  # noqa: E731
                        d, start(s), cal["ratio"], r, out / "rl" / key, src, log)
                else:
                    go = lambda arm=arm, s=s, r=r, key=key: run_arm(  # noqa: E731
                        d, arm, start(s), lr["lr"], d.rl_steps, r, out / "rl" / key, src, log)
                runs[key] = cached(path, go)
                acc = np.mean(runs[key]["test"][rule_of(arm)])
                log(f"{key}: test {acc:.3f} ({rule_of(arm)})")
    for s in d.sft_seeds:  # the report needs the records only, not the checkpoints
        if s not in sft and (out / f"sft_s{s}.json").exists():
            sft[s] = json.loads((out / f"sft_s{s}.json").read_text())
    return {"design": design_dict(d), "sft": {str(k): v for k, v in sft.items()}, "lr": lr,
            "runs": runs}
