"""RL where it is the right tool: 4x4 Sudoku split by solution grid, SFT on a fixed labelled
set until validation accuracy plateaus, then RL on unlabelled puzzles of other grids with the
verifier's reward, against SFT continued on the same labelled set for the same wall clock.

    python scripts/rl_split_sudoku.py --out out/rl_split        # resumable: stages are cached

Parts of the 288 grids (``dllm_jax.tasks.sudoku.grid_split_indices``): ``sft`` (labelled
set), ``rl`` (prompts only), ``val`` (plateau and learning-rate choice), ``test`` (reported
once). Stages, each cached as ``OUT/<stage>.json``: the SFT model (validation curve), the
learning-rate grid (short RL runs scored on validation), the RL run at the chosen rate
(per-step reward, zero-variance groups, KL, clip fraction, update norm; validation every
``--check-every`` steps), the compute-matched ``sft_more`` control, and the test accuracies.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dllm_jax import programs
from dllm_jax.programs.config import DataSpec, ModelSpec, RLConfig, RLProgram, SFTProgram
from dllm_jax.programs.datasources import TaskSource
from dllm_jax.programs.evaluate import evaluate
from dllm_jax.programs.sanity import rl_curve
from dllm_jax.sampling import LLaDAConfig
from dllm_jax.train.config import CheckpointConfig, OptimConfig, TrainConfig
from dllm_jax.weights.convert import from_pretrained


def log(msg: str) -> None:
    print(f"[split {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cached(path: Path, fn):
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(fn(), indent=1))
        tmp.replace(path)
    return json.loads(path.read_text())


def train_cfg(a, steps: int, batch: int, lr: float, every: int, seed: int) -> TrainConfig:
    return TrainConfig(seed=seed, steps=steps, batch_size=batch, log_every=1,
                       optim=OptimConfig(lr=lr, total_steps=steps, schedule="constant",
                                         warmup_steps=min(50, steps // 10), weight_decay=0.01),
                       checkpoint=CheckpointConfig(every=every, keep=1))


def sft_stage(a, out: Path, val: TaskSource, init: str | None = None, steps: int | None = None,
              seed: int = 0) -> dict:
    """SFT on the labelled set: to a plateau (no better validation accuracy for
    ``--patience`` checks) or, with ``steps``, exactly that many steps (from ``init``)."""
    curve, best = [], [0.0, 0]

    def stop(model, step, last):
        acc = evaluate(model, val, "low_confidence")[0]
        curve.append([step, acc, last.get("loss")])
        log(f"SFT {out.name} step {step}: validation {acc:.3f}")
        if acc > best[0]:
            best[:] = [acc, len(curve)]
        return steps is None and len(curve) - best[1] >= a.patience

    total = steps or a.sft_max_steps
    prog = SFTProgram(out=str(out), model=ModelSpec(init=init, hidden_size=a.hidden,
                                                    num_layers=a.layers),
                      data=DataSpec(task="sudoku", task_options="grid_split=sft",
                                    num_train=a.labelled),
                      train=train_cfg(a, total, a.sft_batch, a.sft_lr, a.check_every, seed))
    t0 = time.perf_counter()
    model_dir = programs.run_sft(prog, overwrite=True, stop=stop, mesh=None, progress=False)
    return {"model": str(model_dir), "curve": curve, "seconds": time.perf_counter() - t0,
            "steps": int(curve[-1][0]) if curve else total}


def rl_stage(a, out: Path, init: str, lr: float, steps: int, val: TaskSource, seed: int) -> dict:
    curve = []

    def stop(model, step, last):
        acc = evaluate(model, val, "low_confidence")[0]
        curve.append([step, acc])
        log(f"RL {out.name} step {step}: validation {acc:.3f}, reward {last.get('reward')}")
        return False

    rl = RLConfig(loss=a.loss, prompts_per_step=a.prompts, group_size=a.group,
                  beta=a.beta, inner_iterations=a.inner,
                  sampler=LLaDAConfig(steps=16, gen_length=16, block_length=16,
                                      temperature=1.0))
    every = min(a.check_every_rl, steps) * a.inner
    prog = RLProgram(out=str(out), model=ModelSpec(init=init),
                     data=DataSpec(task="sudoku", task_options="grid_split=rl",
                                   num_train=a.unlabelled),
                     train=TrainConfig(seed=seed, steps=steps * a.inner, batch_size=1,
                                       log_every=1,
                                       optim=OptimConfig(lr=lr, total_steps=steps * a.inner,
                                                         schedule="constant", warmup_steps=0),
                                       checkpoint=CheckpointConfig(every=every, keep=1)), rl=rl)
    t0 = time.perf_counter()
    model_dir = programs.run_rl(prog, overwrite=True, stop=stop, mesh=None, progress=False)
    return {"model": str(model_dir), "lr": lr, "val_curve": curve,
            "seconds": time.perf_counter() - t0, "steps": rl_curve(out, a.inner)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/rl_split")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--labelled", type=int, default=1000)
    ap.add_argument("--unlabelled", type=int, default=5000)
    ap.add_argument("--sft-batch", type=int, default=128)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--sft-max-steps", type=int, default=1500)
    ap.add_argument("--check-every", type=int, default=100)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--loss", default="tracerl")
    ap.add_argument("--beta", type=float, default=0.01)
    ap.add_argument("--inner", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr-grid", default="3e-5,1e-4,3e-4")
    ap.add_argument("--grid-steps", type=int, default=30)
    ap.add_argument("--rl-steps", type=int, default=300)
    ap.add_argument("--check-every-rl", type=int, default=50)
    ap.add_argument("--num-val", type=int, default=256)
    ap.add_argument("--num-test", type=int, default=1000)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(vars(a), indent=1))
    val = TaskSource("sudoku", 1, a.num_val, options={"grid_split": "val"})
    test = TaskSource("sudoku", 2, a.num_test, options={"grid_split": "test"})
    sft = cached(out / "sft.json", lambda: sft_stage(a, out / "sft", val))
    grid = {}
    for lr in [float(x) for x in a.lr_grid.split(",")]:
        r = cached(out / f"grid_{lr:g}.json",
                   lambda lr=lr: rl_stage(a, out / f"grid_{lr:g}", sft["model"], lr,
                                          a.grid_steps, val, seed=0))
        grid[lr] = r["val_curve"][-1][1]
    lr = max(grid, key=lambda k: (grid[k], -k))
    log(f"learning-rate grid (validation after {a.grid_steps} steps): {grid}; chosen {lr:g}")
    rl = cached(out / "rl.json", lambda: rl_stage(a, out / "rl", sft["model"], lr, a.rl_steps,
                                                  val, seed=0))
    sec_per_step = sft["seconds"] / max(sft["steps"], 1)
    more_steps = max(1, round(rl["seconds"] / sec_per_step))
    more = cached(out / "sft_more.json", lambda: sft_stage(
        a, out / "sft_more", val, init=sft["model"], steps=more_steps))

    def test_acc():
        return {name: evaluate(from_pretrained(m), test, "low_confidence")[0]
                for name, m in (("sft", sft["model"]), ("rl", rl["model"]),
                                ("sft_more", more["model"]))}

    res = cached(out / "test.json", test_acc)
    summary = {"lr_grid": grid, "lr": lr, "sft_steps": sft["steps"],
               "sft_more_steps": more_steps, "test": res, "num_test": a.num_test}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(out / "curves.png", sft, rl, more)
    log(f"summary: {summary}")


def plot(path: Path, sft: dict, rl: dict, more: dict) -> None:
    """Mean rollout reward per RL step (and its 10-step running mean); validation accuracy of
    SFT, of RL after the SFT steps, and of ``sft_more``, against training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    r = np.asarray(rl["steps"]["reward"])
    ax1.plot(r, alpha=0.35, label="mean reward per step")
    ax1.plot(np.convolve(r, np.ones(10) / 10, mode="valid"), label="10-step mean")
    ax1.plot(rl["steps"]["zero_var_groups"], alpha=0.5, label="zero-variance share")
    ax1.set(xlabel="RL step", title="RL rollouts (rl grids)")
    ax1.legend()
    s_steps, s_acc = zip(*[(c[0], c[1]) for c in sft["curve"]], strict=True)
    ax2.plot(s_steps, s_acc, "o-", label="SFT (labelled set)")
    n = s_steps[-1]
    ax2.plot([n] + [n + c[0] for c in rl["val_curve"]],
             [s_acc[-1]] + [c[1] for c in rl["val_curve"]], "s-", label="RL (RL steps)")
    ax2.plot([n] + [n + c[0] for c in more["curve"]], [s_acc[-1]] + [c[1] for c in
                                                                      more["curve"]],
             "^-", label="sft_more (SFT steps)")
    ax2.set(xlabel="step", ylabel="validation accuracy (val grids)", title="Validation")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
