"""Seeded, paired study of RL step selection (ATPO), attention order (AGDO) and IMH global
tempering on the built-in 4x4 Sudoku (16-token answers, one token per denoising step).

    python scripts/study_rl.py --out out/study            # the full design (docs/studies.md)
    python scripts/study_rl.py --quick --out out/study_quick

One SFT model per SFT seed, trained to a step count fixed on validation data (the first seed
stops at the first check whose validation accuracy reaches ``sft_target``; every other seed
trains exactly that many steps). From each SFT model every arm runs the same RL steps on the
same prompts with the same rollout keys per RL seed (paired), at the same state budget K;
``sft_more`` continues SFT for the wall clock of that seed's ``uniform`` run. Each finished
run is cached as ``OUT/runs/<arm>_s<sft>_r<rl>.json`` (an interrupted study continues where
it stopped); ``OUT/results.json`` (the primary endpoint is written there before any training),
``OUT/report.md`` and ``OUT/study_*.png`` are rebuilt from the cache at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax import objectives as obj
from dllm_jax.analysis.zones import FEATURES, confusion_zones, roec, zone_features
from dllm_jax.data.sources import TaskSource
from dllm_jax.eval.metrics import pass_at_k
from dllm_jax.eval.stats import boot_mean, bootstrap_ci, cv_scores, paired, rank_auc, t_interval
from dllm_jax.sampling import IMHConfig, LLaDAConfig, generate
from dllm_jax.sampling.imh import token_log_probs
from dllm_jax.train import programs
from dllm_jax.train.config import CheckpointConfig, OptimConfig, TrainConfig
from dllm_jax.train.demo import evaluate
from dllm_jax.train.programs import DataSpec, ModelSpec, RLProgram, SFTProgram
from dllm_jax.train.rl import RLConfig
from dllm_jax.weights.convert import from_pretrained

TASK = "sudoku"
# Each RL arm: the loss and what differs from its published defaults (docs/objectives.md).
ARMS: dict[str, dict | None] = {
    "uniform": dict(loss="tracerl", selector="uniform"),   # TraceRL: K merged states
    "random": dict(loss="tracerl", selector="random"),     # K random single steps
    "atpo": dict(loss="tracerl", selector="atpo"),         # hybrid RoEC + CM, rho None
    "atpo_cov": dict(loss="tracerl", selector="atpo", rho=0.5),
    "roec": dict(loss="tracerl", selector="roec"),
    "cm": dict(loss="tracerl", selector="cm"),
    "agdo": dict(loss="agdo_rl", delta=5.0),
    "agdo_d0": dict(loss="agdo_rl", delta=0.0),
    "sft_more": None,                                       # SFT for an RL arm's wall clock
}
RULES = ("low_confidence", "max_s")


def rule_of(arm: str) -> str:
    """The decoding order an arm is evaluated in: AGDO's arms roll out in attention order."""
    return "max_s" if arm.startswith("agdo") else "low_confidence"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Size:
    """The study's sizes: seeds, arms, model, SFT and RL settings, evaluation sets, analyses.
    ``full`` is the specified design; ``--arms``/``--sft-seeds``/``--rl-seeds`` shrink it."""

    sft_seeds: tuple[int, ...] = (0, 1)
    rl_seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
    arms: tuple[str, ...] = tuple(ARMS)
    hidden_size: int = 128
    num_layers: int = 4
    sft_batch: int = 128
    sft_lr: float = 1e-3
    sft_target: float = 0.3  # validation accuracy at which the first SFT seed's step count is set
    sft_check_every: int = 50
    sft_max_steps: int = 2000
    num_train: int = 20000
    rl_steps: int = 24
    rl_prompts: int = 8
    rl_group: int = 8
    rl_budget: int = 2  # K = ceil(T / shrinkage 8) for T = 16: TraceRL's default
    rl_lr: float = 1e-4
    curve_every: int = 8
    num_val: int = 256
    num_test: int = 1000
    passk_prompts: int = 128
    passk_samples: int = 8
    zone_shuffles: int = 20
    imh_prompts: int = 256
    imh_candidates: int = 8  # IMHConfig's default K
    imh_samples: int = 2     # IMH samples per prompt (random order gets K times as many)
    imh_alpha: float = 4.0   # IMHConfig's default
    orders_per_x: int = 8
    boot: int = 10000


SIZES = {
    "full": Size(),
    "quick": Size(sft_seeds=(0,), rl_seeds=(100, 101), arms=("uniform", "random", "atpo", "agdo"),
                  hidden_size=64, num_layers=2, sft_lr=3e-3, sft_check_every=100, sft_max_steps=400,
                  num_train=4000, rl_steps=4, rl_prompts=4, rl_group=4, curve_every=2,
                  num_val=64, num_test=128, passk_prompts=16, passk_samples=4,
                  zone_shuffles=5, imh_prompts=16, imh_candidates=4, orders_per_x=4,
                  boot=1000),
}

# ------------------------------------------------------------------------------ runs
def finite(x):
    """``x`` with NaN / infinite floats as None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(obj), indent=1, allow_nan=False))


def cached(path: Path, fn):
    """``fn()``'s JSON result, computed once (an interrupted study picks up from here)."""
    if not path.exists():
        dump(path, fn())
    return json.loads(path.read_text())


def log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_config(seed: int, steps: int, total: int, batch: int, lr: float, every: int
                 ) -> TrainConfig:
    """The demo's convention (constant lr after min(50, total / 10) warmup steps); ``total``
    fixes the schedule so a run trained in chunks equals one trained at once."""
    return TrainConfig(seed=seed, steps=steps, batch_size=batch, log_every=1,
                       optim=OptimConfig(lr=lr, total_steps=total, schedule="constant",
                                         warmup_steps=min(50, total // 10), weight_decay=0.01),
                       checkpoint=CheckpointConfig(every=every, keep=1))


def passk(model, src: TaskSource, rule: str, n: int, seed: int) -> dict:
    """pass@k (k = 1, 2, 4, ... n) at temperature 1 over every prompt of ``src``."""
    a = src.answer_length
    rows = np.repeat(np.arange(src.num_prompts), n)
    cfg = LLaDAConfig(steps=a, gen_length=a, block_length=a, remasking=rule, temperature=1.0)
    seqs = np.asarray(generate(model, src.prompts(rows), config=cfg, key=seed).sequences)
    c = (src.rewards(rows, seqs[:, src.prompt_length:]) >= 1).reshape(-1, n).sum(1)
    ks = [2 ** i for i in range(int(math.log2(n)) + 1)]
    return {str(k): float(np.mean([pass_at_k(n, int(ci), k) for ci in c])) for k in ks}


def final_evals(model, arm: str, data: dict, size: Size, seed: int) -> dict:
    """Greedy test accuracy in both orders and pass@k in the arm's own order."""
    return {"test": {r: evaluate(model, data["test"], r, seed=seed)[0] for r in RULES},
            "pass_at_k": passk(model, data["passk"], rule_of(arm), size.passk_samples, seed)}


def sft_model(size: Size, seed: int, steps: int | None, out: Path, data: dict) -> dict:
    """SFT seed ``seed``: with ``steps`` None, stops at the first validation check reaching
    ``size.sft_target`` (that step count is then fixed for every other seed)."""
    curve: list[list[float]] = []

    def stop(model, step: int, last: dict) -> bool:
        acc = evaluate(model, data["val"], "low_confidence", seed=seed)[0]
        curve.append([step, acc])
        log(f"SFT seed {seed} step {step}: validation accuracy {acc:.3f}")
        return acc >= size.sft_target

    total = steps or size.sft_max_steps
    prog = SFTProgram(out=str(out), data=DataSpec(task=TASK, num_train=size.num_train),
                      model=ModelSpec(hidden_size=size.hidden_size, num_layers=size.num_layers),
                      train=train_config(seed, total, size.sft_max_steps, size.sft_batch,
                                         size.sft_lr, every=size.sft_check_every))
    t0 = time.perf_counter()
    model_dir = programs.run_sft(prog, overwrite=True, stop=None if steps else stop, mesh=None,
                                 progress=False)
    seconds = time.perf_counter() - t0
    model = from_pretrained(model_dir)
    _, correct, traj = evaluate(model, data["test"], "low_confidence", record=True, seed=seed)
    np.savez(out / "trajectory.npz", correct=correct, **{
        k: np.asarray(getattr(traj, k)) for k in ("entropy", "margin", "roec", "valid")})
    return {"steps": steps or int(curve[-1][0]), "seconds": seconds, "val_curve": curve,
            "val": {r: evaluate(model, data["val"], r, seed=seed)[0] for r in RULES},
            **final_evals(model, "sft", data, size, seed), "model": str(model_dir)}


def seconds_per_step(run_dir: Path) -> float:
    """Median wall clock of one training step of a run (from its ``metrics.jsonl``, logged
    every step; the first step of each chunk, which compiles, falls out as the median's
    outlier)."""
    logs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    gaps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(logs, logs[1:], strict=False)
            if b["step"] == a["step"] + 1 and b["elapsed_s"] > a["elapsed_s"]]
    return float(np.median(gaps))


def rl_arm(size: Size, arm: str, sft: dict, rl_seed: int, out: Path, data: dict) -> dict:
    """One RL arm from the SFT model, trained in chunks of ``curve_every`` steps (each chunk
    resumes the last one's checkpoint, so the run equals one trained at once) with the
    validation accuracy after every chunk."""
    rule, a = rule_of(arm), data["test"].answer_length
    rl = RLConfig(prompts_per_step=size.rl_prompts, group_size=size.rl_group,
                  budget=size.rl_budget, **ARMS[arm],
                  sampler=LLaDAConfig(steps=a, gen_length=a, block_length=a, temperature=1.0))
    curve, seconds, model = [[0, sft["val"][rule]]], 0.0, None
    for end in range(size.curve_every, size.rl_steps + 1, size.curve_every):
        prog = RLProgram(out=str(out), model=ModelSpec(init=sft["model"]),
                         data=DataSpec(task=TASK, num_train=size.num_train), rl=rl,
                         train=train_config(rl_seed, end, size.rl_steps, 1, size.rl_lr,
                                            every=size.curve_every))
        t0 = time.perf_counter()
        model_dir = programs.run_rl(prog, resume=end > size.curve_every,
                                    overwrite=end == size.curve_every, mesh=None, progress=False)
        seconds += time.perf_counter() - t0
        model = from_pretrained(model_dir)
        curve.append([end, evaluate(model, data["val"], rule, seed=rl_seed)[0]])
    rewards = [json.loads(x)["reward"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"curve": curve, "train_seconds": seconds, "train_reward": rewards,
            "config": dataclasses.asdict(prog.resolved().rl),
            **final_evals(model, arm, data, size, rl_seed)}


def sft_more_arm(size: Size, sft: dict, seconds: float, rl_seed: int, out: Path,
                 data: dict) -> dict:
    """SFT continued from the SFT model for ``seconds`` of wall clock (converted to steps at
    the SFT run's measured seconds per step), validation accuracy at the same checkpoints."""
    per_step = seconds_per_step(Path(sft["model"]).parent)
    steps = max(size.curve_every, round(seconds / per_step))
    every = math.ceil(steps / (size.rl_steps // size.curve_every))
    curve = [[0, sft["val"]["low_confidence"]]]

    def stop(model, step: int, last: dict) -> bool:
        curve.append([step, evaluate(model, data["val"], "low_confidence", seed=rl_seed)[0]])
        return False

    prog = SFTProgram(out=str(out), model=ModelSpec(init=sft["model"]),
                      data=DataSpec(task=TASK, num_train=size.num_train),
                      train=train_config(rl_seed, steps, steps, size.sft_batch, size.sft_lr,
                                         every=every))
    t0 = time.perf_counter()
    model_dir = programs.run_sft(prog, overwrite=True, stop=stop, mesh=None, progress=False)
    return {"curve": curve, "steps": steps, "target_seconds": seconds, "sft_step_seconds": per_step,
            "train_seconds": time.perf_counter() - t0,
            **final_evals(from_pretrained(model_dir), "sft_more", data, size, rl_seed)}


# ------------------------------------------------------------------------------ analyses
def zone_counts(h_BT, cm_BT, roec_BT, valid_BT) -> tuple[np.ndarray, np.ndarray]:
    """Number of confusion zones and of steps inside them, per row."""
    zs = [confusion_zones(r, c, 1.0, v) for r, c, v in zip(roec_BT, cm_BT, valid_BT, strict=True)]
    return (np.array([len(z) for z in zs], float),
            np.array([sum(x.num_steps for x in z) for z in zs], float))


def zone_study(path: Path, size: Size, seed: int) -> dict:
    """Zone features vs mean entropy for predicting correctness (cross-validated logistic
    models, bootstrap over items), and zone counts and lengths against a null that shuffles
    each trajectory's steps (H and CM permuted together, RoEC recomputed)."""
    z = np.load(path)
    h, cm, valid, y = z["entropy"], z["margin"], z["valid"], z["correct"].astype(float)
    feats = zone_features(h, cm, z["roec"], 1.0, valid)
    X = np.stack([feats[f] for f in FEATURES], 1)
    s_all = cv_scores(X, y, 5, seed)
    s_ent = cv_scores(X[:, [FEATURES.index("mean_entropy")]], y, 5, seed)
    nz, st = zone_counts(h, cm, z["roec"], valid)
    rng, null = np.random.default_rng(seed), []
    for _ in range(size.zone_shuffles):
        perm = np.argsort(rng.random(h.shape), axis=1)
        hh = np.take_along_axis(h, perm, 1)
        null.append(zone_counts(hh, np.take_along_axis(cm, perm, 1), roec(hh, valid), valid))
    nz0, st0 = (np.mean([q[i] for q in null], 0) for i in (0, 1))
    n = len(y)

    def est(f) -> dict:  # a statistic of the items and its bootstrap interval over items
        return {"mean": float(f(np.arange(n))), "ci95": bootstrap_ci(f, n, None, 1000, seed)}

    auc = lambda sc: lambda i: rank_auc(sc[i], y[i])  # noqa: E731
    length = lambda a, b: lambda i: a[i].sum() / max(b[i].sum(), 1.0)  # noqa: E731
    return {"n": n, "features": list(FEATURES), "zone_shuffles": size.zone_shuffles,
            "accuracy": est(lambda i: y[i].mean()),
            "auc_zone_model": est(auc(s_all)), "auc_mean_entropy": est(auc(s_ent)),
            "auc_zone_model - auc_mean_entropy": est(lambda i: auc(s_all)(i) - auc(s_ent)(i)),
            "zones_per_trajectory": est(lambda i: nz[i].mean()),
            "zones_per_trajectory_shuffled": est(lambda i: nz0[i].mean()),
            "zones_per_trajectory - shuffled": est(lambda i: nz[i].mean() - nz0[i].mean()),
            "steps_per_zone": est(length(st, nz)),
            "steps_per_zone_shuffled": est(length(st0, nz0)),
            "steps_per_zone - shuffled": est(lambda i: length(st, nz)(i) - length(st0, nz0)(i)),
            "fraction_of_steps_in_zones": est(length(st, valid.sum(1))),
            "fraction_of_steps_in_zones_shuffled": est(length(st0, valid.sum(1)))}


@functools.partial(jax.jit, static_argnums=0)
def _order_rows_logp(graphdef, state, tokens_RL, masked_RL, target_RL):
    model = nnx.merge(graphdef, state)
    mask_id = model.config.mask_token_id
    logits = obj.aligned(model, jnp.where(masked_RL, mask_id, tokens_RL))
    lp = token_log_probs(logits, tokens_RL, mask_id)
    return jnp.sum(jnp.where(target_RL, lp, 0.0), -1)


def order_logp(model, seqs_RL: np.ndarray, rank_RG: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``log p(x | order)`` ``[R]``: the answer committed one position per step, position g at
    step ``rank[g]``, each token scored with the later positions still masked."""
    r, g = rank_RG.shape
    p_len = seqs_RL.shape[1] - g
    t = np.arange(g)[None, :, None]
    masked = np.zeros((r, g, seqs_RL.shape[1]), bool)
    masked[:, :, p_len:] = rank_RG[:, None, :] >= t
    target = np.zeros_like(masked)
    target[:, :, p_len:] = rank_RG[:, None, :] == t
    toks = np.repeat(seqs_RL[:, None], g, 1).reshape(r * g, -1)
    masked, target = masked.reshape(r * g, -1), target.reshape(r * g, -1)
    graphdef, state = nnx.split(model)
    out = np.concatenate([np.asarray(_order_rows_logp(graphdef, state, toks[i:i + chunk],
                                                      masked[i:i + chunk], target[i:i + chunk]))
                          for i in range(0, len(toks), chunk)])
    return out.reshape(r, g).sum(1)


def imh_study(model, size: Size, seed: int) -> dict:
    """IMH (K proposals per returned sample) against random order with K times the samples
    and against best-of-K by path likelihood from the same random-order pool (equal forward
    passes), and how much ``log p(x | order)`` varies over random orders of the same x."""
    src = TaskSource(TASK, 0, size.imh_prompts, split="test")
    a, k, n, p = src.answer_length, size.imh_candidates, size.imh_samples, size.imh_prompts
    imh = IMHConfig(alpha=size.imh_alpha, num_candidates=k, gen_length=a, block_length=a,
                    steps=a, proposal="random", proposal_temperature=1.0)
    rows = np.repeat(np.arange(p), n)
    seqs = np.asarray(generate(model, src.prompts(rows), config=imh, key=seed).sequences)
    c_imh = (src.rewards(rows, seqs[:, src.prompt_length:]) >= 1).reshape(p, n)
    rows_k = np.repeat(np.arange(p), n * k)
    rnd = LLaDAConfig(steps=a, gen_length=a, block_length=a, remasking="random", temperature=1.0)
    out = generate(model, src.prompts(rows_k), config=rnd, key=seed + 1, record=True)
    pool = np.asarray(out.sequences)
    c_rnd = (src.rewards(rows_k, pool[:, src.prompt_length:]) >= 1).reshape(p, n, k)
    lp_conf = np.log(np.asarray(out.trajectory.confidence, np.float64)).sum(1).reshape(p, n, k)
    c_best = np.take_along_axis(c_rnd, lp_conf.argmax(-1)[..., None], -1)[..., 0]
    pk = lambda c, m: np.array([pass_at_k(c.shape[1], int(x), m) for x in c.sum(1)])  # noqa: E731
    c_rnd = c_rnd.reshape(p, -1)
    v = {"imh_pass1": pk(c_imh, 1), "best_of_k_pass1": pk(c_best, 1),
         "random_pass1": pk(c_rnd, 1), f"imh_pass{n}": pk(c_imh, n),
         f"best_of_k_pass{n}": pk(c_best, n), f"random_pass{n * k}": pk(c_rnd, n * k)}
    for x1, x2 in (("imh_pass1", "best_of_k_pass1"), ("imh_pass1", "random_pass1"),
                   (f"imh_pass{n}", f"random_pass{n * k}"),
                   (f"best_of_k_pass{n}", f"random_pass{n * k}")):
        v[f"{x1} - {x2}"] = v[x1] - v[x2]
    # log p(x | order) for the first pool sample of each prompt: its own order and M others.
    first = np.arange(p) * n * k
    x, own = pool[first], np.asarray(out.trajectory.step_map)[first]
    rng = np.random.default_rng(seed)
    ranks = np.stack([own] + [np.argsort(rng.random((p, a)), 1)
                              for _ in range(size.orders_per_x)], 1)
    lp = order_logp(model, np.repeat(x, ranks.shape[1], 0), ranks.reshape(-1, a)).reshape(p, -1)
    v.update({"order_logp_sd_across_orders": lp[:, 1:].std(1, ddof=1),
              "order_logp_range_across_orders": lp[:, 1:].max(1) - lp[:, 1:].min(1),
              "order_logp_own_minus_mean_random": lp[:, 0] - lp[:, 1:].mean(1)})
    mean_lp = lp[:, 1:].mean(1)
    return {"prompts": p, "K": k, "alpha": size.imh_alpha, "imh_samples_per_prompt": n,
            "orders_per_x": size.orders_per_x,
            "forward_passes_per_returned_sample": {"imh": k * a, "best_of_k": k * a, "random": a},
            **{name: boot_mean(x_, size.boot, seed) for name, x_ in v.items()},
            "order_logp_sd_across_x": {"mean": float(mean_lp.std(ddof=1)), "ci95": bootstrap_ci(
                lambda i: mean_lp[i].std(ddof=1), p, None, 1000, seed)},
            "max_abs_own_order_vs_recorded": float(np.abs(lp[:, 0] - lp_conf.reshape(p, -1)[:, 0])
                                                   .max())}


# ------------------------------------------------------------------------------ summary
CONTRASTS = (("atpo", "random"), ("atpo_cov", "random"), ("roec", "random"), ("cm", "random"),
             ("atpo", "atpo_cov"), ("agdo", "agdo_d0"), ("uniform", "sft_more"))


def curve_area(curve) -> float:
    """Mean validation accuracy over the run: trapezoid area over the run's length."""
    c = np.asarray(curve, np.float64)
    return float(np.sum((c[1:, 1] + c[:-1, 1]) / 2 * np.diff(c[:, 0])) / c[-1, 0])


def summarize(size: Size, sft: dict, runs: dict, protocol: dict) -> dict:
    """Per-arm means with t-intervals over seeds and paired bootstrap contrasts over the
    (SFT seed, RL seed) units every arm finished."""
    arms = size.arms
    units = [(s, r) for s in size.sft_seeds for r in size.rl_seeds
             if all(f"{a}_s{s}_r{r}" in runs for a in arms)]
    strata = [s for s, _ in units]
    get = lambda arm, f: np.array([f(runs[f"{arm}_s{s}_r{r}"]) for s, r in units])  # noqa: E731
    primary = {a: get(a, lambda x, a=a: x["test"][rule_of(a)]) for a in arms}
    area = {a: get(a, lambda x: curve_area(x["curve"])) for a in arms}
    res = {**protocol, "units": units, "arms": {}, "paired_vs_uniform": {},
           "paired_vs_uniform_same_rule": {r: {} for r in RULES}, "curve_area_vs_uniform": {},
           "contrasts": {}, "sft": sft}
    for a in arms:
        res["arms"][a] = {**t_interval(primary[a]), "rule": rule_of(a),
                          "by_rule": {r: t_interval(get(a, lambda x, r=r: x["test"][r]))
                                      for r in RULES},
                          "curve_area": t_interval(area[a]),
                          "pass_at_k": {k: t_interval(get(a, lambda x, k=k: x["pass_at_k"][k]))
                                        for k in runs[f"{a}_s{units[0][0]}_r{units[0][1]}"][
                                            "pass_at_k"]},
                          "train_seconds": t_interval(get(a, lambda x: x["train_seconds"]))}
        if a == "uniform":
            continue
        res["paired_vs_uniform"][a] = paired(primary[a] - primary["uniform"], strata, size.boot, 0)
        res["curve_area_vs_uniform"][a] = paired(area[a] - area["uniform"], strata, size.boot, 0)
        for r in RULES:
            d = get(a, lambda x, r=r: x["test"][r]) - get("uniform", lambda x, r=r: x["test"][r])
            res["paired_vs_uniform_same_rule"][r][a] = paired(d, strata, size.boot, 0)
    for a in arms:  # each arm against the SFT model it started from, in the arm's own order
        start = np.array([sft[s]["test"][rule_of(a)] for s, _ in units])
        res["contrasts"][f"{a} - sft"] = paired(primary[a] - start, strata, size.boot, 0)
    for a, b in CONTRASTS:
        if a in arms and b in arms:
            res["contrasts"][f"{a} - {b}"] = paired(primary[a] - primary[b], strata, size.boot, 0)
    return res


def plots(res: dict, out: Path) -> list[str]:
    """``study_arms.png`` (each seed, mean and interval per arm), ``study_curves.png``
    (validation learning curves) and ``study_paired.png`` (paired differences vs uniform)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(res["arms"])
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, a in enumerate(arms):
        v = res["arms"][a]
        ax.plot(np.full(len(v["seeds"]), i) + np.linspace(-0.15, 0.15, len(v["seeds"])),
                v["seeds"], "o", color="0.6", ms=4)
        ax.errorbar(i + 0.3, v["mean"], yerr=[[v["mean"] - v["ci95"][0]],
                                              [v["ci95"][1] - v["mean"]]], fmt="s", color="C0")
    for info in res["sft"].values():
        for rule, ls in zip(RULES, ("--", ":"), strict=True):
            ax.axhline(info["test"][rule], ls=ls, color="C3", lw=0.8)
    ax.set_xticks(range(len(arms)), arms, rotation=30)
    ax.set_ylabel("greedy test accuracy")
    ax.set_title("per seed (grey), mean and 95% t-interval; SFT start: low_confidence dashed, "
                 "max_s dotted", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "study_arms.png", dpi=100)
    fig, ax = plt.subplots(figsize=(7, 4))
    for a in arms:
        cs = [np.asarray(res["curves"][k]) for k in res["curves"] if k.startswith(a + "_s")]
        ax.plot(cs[0][:, 0] / cs[0][-1, 0], np.mean([c[:, 1] for c in cs], 0), label=a)
    ax.set_xlabel("fraction of the run (RL steps; SFT steps for sft_more)")
    ax.set_ylabel("validation accuracy (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "study_curves.png", dpi=100)
    fig, ax = plt.subplots(figsize=(7, 4))
    pv = res["paired_vs_uniform"]
    for i, a in enumerate(pv):
        m = pv[a]["mean_diff"]
        for key, dy, color in (("t_ci95", -0.1, "0.5"), ("ci95", 0.1, "C0")):
            lo, hi = pv[a].get(key, (m, m))
            ax.errorbar(m, i + dy, xerr=[[m - lo], [hi - m]], fmt="o", color=color)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(pv)), list(pv))
    ax.set_xlabel("test accuracy minus uniform's, paired: t 95% (grey), bootstrap 95% (blue)")
    fig.tight_layout()
    fig.savefig(out / "study_paired.png", dpi=100)
    fig, ax = plt.subplots(figsize=(7, 4))
    imh = res["imh"]
    bars = [k for k in imh if k.endswith(tuple("0123456789")) and " - " not in k]
    for i, k in enumerate(bars):
        ax.bar(i, imh[k]["mean"], color=f"C{i % 3}")
        ax.errorbar(i, imh[k]["mean"], yerr=[[imh[k]["mean"] - imh[k]["ci95"][0]],
                                             [imh[k]["ci95"][1] - imh[k]["mean"]]], color="k")
    ax.set_xticks(range(len(bars)), bars, rotation=20, fontsize=8)
    ax.set_ylabel("pass@k (bootstrap 95% over prompts)")
    ax.set_title(f"{imh['prompts']} test prompts, K = {imh['K']}, alpha {imh['alpha']}: IMH and "
                 "best-of-K cost K x 16 forward passes per sample", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "study_imh.png", dpi=100)
    return ["study_arms.png", "study_curves.png", "study_paired.png", "study_imh.png"]


def fmt(v: dict, key: str = "mean") -> str:
    """``mean [lo, hi]`` (``n/a`` for a statistic that is undefined, e.g. an AUC with one
    class)."""
    x, (lo, hi) = v[key], v["ci95"]
    return "n/a" if None in (x, lo, hi) else f"{x:.3f} [{lo:.3f}, {hi:.3f}]"


def report(res: dict) -> str:
    lines = [f"# Study: {res['task']} ({res['size']})", "", f"Primary endpoint: "
             f"{res['primary_endpoint']}.", "", f"{res['date']}; {res['machine']}; "
             f"`{res['command']}`; {res['wall_seconds']:.0f} s in this invocation (cached "
             f"parts are not re-timed); units (SFT seed, RL seed): "
             f"{res['units']}.", "", "| arm | rule | primary | low_confidence | max_s | "
             "curve area | pass@1 | pass@max | vs uniform |", "|" + "---|" * 9]
    for a, v in res["arms"].items():
        pk = v["pass_at_k"]
        vs = fmt(res["paired_vs_uniform"][a], "mean_diff") if a in res[
            "paired_vs_uniform"] else "-"
        lines.append(f"| {a} | {v['rule']} | {fmt(v)} | {fmt(v['by_rule']['low_confidence'])}"
                     f" | {fmt(v['by_rule']['max_s'])} | {fmt(v['curve_area'])} | "
                     f"{fmt(pk['1'])} | {fmt(pk[max(pk, key=int)])} | {vs} |")
    lines += ["", "| contrast (paired) | mean diff [bootstrap 95%] | t 95% | MDE (80% power) |",
              "|---|---|---|---|"]
    contrasts = {**{f"{a} - uniform": v for a, v in res["paired_vs_uniform"].items()},
                 **{f"{a} - uniform ({r})": v for r, d in res["paired_vs_uniform_same_rule"]
                    .items() for a, v in d.items()},
                 **{f"{a} - uniform (curve area)": v for a, v in
                    res["curve_area_vs_uniform"].items()}, **res["contrasts"]}
    for name, v in contrasts.items():
        t = v.get("t_ci95", [float("nan")] * 2)
        lines.append(f"| {name} | {fmt(v, 'mean_diff')} | [{t[0]:.3f}, {t[1]:.3f}] | "
                     f"{v.get('mde80', float('nan')):.3f} |")
    n = len(res["units"])
    lines += ["", f"With {n} units the paired bootstrap has at most {math.comb(2 * n - 1, n)} "
              "distinct resamples, so its percentile interval is too narrow at small n; the t "
              "interval is the one to read there. MDE: the smallest paired difference detected "
              "with 80% power at two-sided 5%, from the observed sd of the differences."]
    lines += ["", "SFT models: " + "; ".join(
        f"seed {s}: {v['steps']} steps, test {v['test']['low_confidence']:.3f} (low_confidence)"
        f" / {v['test']['max_s']:.3f} (max_s)" for s, v in res["sft"].items()), ""]
    for title, part in [(f"Confusion zones (SFT seed {s})", z) for s, z in res["zones"].items()
                        ] + [("IMH at equal forward passes", res["imh"])]:
        lines += [f"## {title}", "", "| statistic | mean [95% bootstrap] |", "|---|---|"]
        lines += [f"| {k} | {fmt(v)} |" if isinstance(v, dict) and "ci95" in v else
                  f"| {k} | {v} |" for k, v in part.items()]
        lines.append("")
    return "\n".join(lines + [f"![{p}]({p})" for p in res["plots"]]) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/study")
    ap.add_argument("--quick", action="store_true", help="toy size (2 seeds, 4 arms)")
    ap.add_argument("--sft-steps", type=int, help="fix the SFT step count (default: chosen on "
                    "validation data by the first SFT seed)")
    for flag in ("arms", "sft-seeds", "rl-seeds"):
        ap.add_argument(f"--{flag}", help=f"comma-separated {flag} replacing the size's")
    args = ap.parse_args(argv)
    name = "quick" if args.quick else "full"
    size, out = SIZES[name], Path(args.out)
    size = dataclasses.replace(size, **{
        k: tuple(v.split(",")) if k == "arms" else tuple(int(x) for x in v.split(","))
        for k, v in (("arms", args.arms), ("sft_seeds", args.sft_seeds),
                     ("rl_seeds", args.rl_seeds)) if v})
    if not set(size.arms) <= set(ARMS) or "uniform" not in size.arms:
        raise SystemExit(f"--arms must include uniform and come from {list(ARMS)}")
    out.mkdir(parents=True, exist_ok=True)
    # Runs rebuild their jitted steps; a persistent cache shares the compiled programs.
    if not jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR wins
        jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    protocol = {"task": TASK, "size": name, "design": dataclasses.asdict(size),
                "primary_endpoint": f"greedy accuracy (exact 16-cell grid, one token per step, "
                f"the arm's own order: low_confidence, max_s for the agdo arms) on "
                f"{size.num_test} held-out test puzzles after {size.rl_steps} RL steps "
                "(sft_more: after SFT continued for the wall clock of the uniform run)",
                "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {platform.python_version()}, jax "
                f"{jax.__version__}, {jax.devices()[0].platform}"}
    log(f"config: {protocol}")
    # More seeds or arms may join a study; any other change of design needs a new --out.
    fixed = lambda d: {k: v for k, v in finite(d).items() if k not in ("arms", "sft_seeds",  # noqa: E731
                                                                      "rl_seeds")}
    if fixed(cached(out / "protocol.json", lambda: protocol)["design"]) != fixed(
            protocol["design"]):
        raise SystemExit(f"{out} holds a study of another design (protocol.json); use a new --out")
    if not (out / "results.json").exists():
        (out / "results.json").write_text(json.dumps({**protocol, "status": "running"}))
    t0 = time.perf_counter()
    data = {"val": TaskSource.validation(TASK, 0, size.num_val),
            "test": TaskSource(TASK, 0, size.num_test, split="test"),
            "passk": TaskSource(TASK, 0, size.passk_prompts, split="test")}
    sft, steps = {}, args.sft_steps
    for s in size.sft_seeds:
        sft[s] = cached(out / f"sft_s{s}.json",
                        lambda s=s: sft_model(size, s, steps, out / f"sft_s{s}", data))
        steps = sft[s]["steps"]
        log(f"SFT seed {s}: {steps} steps, test {sft[s]['test']}")
    zones = cached(out / "zones.json", lambda: {
        str(s): zone_study(out / f"sft_s{s}" / "trajectory.npz", size, s) for s in sft})
    first = size.sft_seeds[0]
    imh = cached(out / "imh.json",
                 lambda: imh_study(from_pretrained(sft[first]["model"]), size, first))
    runs = {}
    for s in size.sft_seeds:
        for r in size.rl_seeds:
            for arm in size.arms:
                key = f"{arm}_s{s}_r{r}"
                run_dir = out / "rl" / key
                if arm == "sft_more":
                    go = functools.partial(sft_more_arm, size, sft[s], runs[
                        f"uniform_s{s}_r{r}"]["train_seconds"], r, run_dir, data)
                else:
                    go = functools.partial(rl_arm, size, arm, sft[s], r, run_dir, data)
                runs[key] = cached(out / "runs" / f"{key}.json", go)
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                log(f"{key}: test {runs[key]['test']}, {runs[key]['train_seconds']:.0f}s")
    res = summarize(size, sft, runs, protocol)
    res.update(zones=zones, imh=imh, wall_seconds=time.perf_counter() - t0,
               curves={k: v["curve"] for k, v in runs.items()})
    res["plots"] = plots(res, out)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "report.md").write_text(report(res))
    log(f"wrote {out / 'results.json'} and {out / 'report.md'}")


if __name__ == "__main__":
    main()
