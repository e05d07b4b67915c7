"""Two analyses of a trained SFT model on a built-in task's test split (docs/studies.md):

- **confusion zones** (:func:`zone_study`): do the zone features of greedy low-confidence
  trajectories predict correctness beyond mean entropy, and are zones fewer, longer or
  shorter than under a null that shuffles each trajectory's steps;
- **IMH at equal forward passes** (:func:`imh_study`): IMH global tempering against random
  order with K times the samples and against best-of-K by path likelihood from the same pool,
  and how much ``log p(x | order)`` varies over random orders of the same ``x``.

Scoring is :func:`dllm_jax.programs.evaluate` (greedy, one token per step) and the tasks'
verifiers; the statistics are :mod:`dllm_jax.eval.stats` (bootstrap over items).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax import programs
from dllm_jax.analysis.zones import FEATURES, confusion_zones, zone_features
from dllm_jax.analysis.zones import roec as rate_of_entropy_change
from dllm_jax.eval.metrics import pass_at_k
from dllm_jax.eval.stats import boot_mean, bootstrap_ci, cv_scores, rank_auc
from dllm_jax.objectives.scoring import aligned
from dllm_jax.programs.config import DataSpec, ModelSpec, SFTProgram
from dllm_jax.programs.datasources import TaskSource
from dllm_jax.programs.evaluate import evaluate
from dllm_jax.sampling import IMHConfig, LLaDAConfig, generate
from dllm_jax.sampling.imh import sampling_log_probs
from dllm_jax.train.config import CheckpointConfig, OptimConfig, TrainConfig

TRAJECTORY_FIELDS = ("entropy", "margin", "roec", "valid")
_CI_BOOT = 1000  # resamples of the intervals computed by a statistic of the items


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalysisSize:
    """Sizes of the two analyses. ``num_test``: test puzzles whose greedy trajectories the
    zone study reads; ``imh_candidates`` is IMH's K, ``imh_samples`` the IMH samples per
    prompt (random order gets K times as many), ``orders_per_x`` the random orders each
    ``x`` is re-scored along, ``boot`` the resamples of the IMH bootstrap."""

    num_test: int = 1000
    zone_shuffles: int = 20
    imh_prompts: int = 256
    imh_candidates: int = 8  # IMHConfig's default K
    imh_samples: int = 2
    imh_alpha: float = 4.0   # IMHConfig's default
    orders_per_x: int = 8
    boot: int = 10000

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"AnalysisSize.{f.name} must be positive, got "
                                 f"{getattr(self, f.name)}")
        if self.orders_per_x < 2:
            raise ValueError("AnalysisSize.orders_per_x must be >= 2 (an sd across orders)")


QUICK = AnalysisSize(num_test=128, zone_shuffles=5, imh_prompts=16, imh_candidates=4,
                     orders_per_x=4, boot=1000)


def finite(x: Any) -> Any:
    """``x`` with NaN / infinite floats as None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


# ------------------------------------------------------------------------------ zones
def trajectories(model, src: TaskSource, seed: int = 0) -> dict[str, np.ndarray]:
    """Greedy low-confidence trajectories of every row of ``src``: ``entropy``, ``margin``,
    ``roec`` (float ``[B, T]``), ``valid`` (bool ``[B, T]``) and ``correct`` (bool ``[B]``),
    the arguments of :func:`zone_study`."""
    _, correct, traj = evaluate(model, src, "low_confidence", record=True, seed=seed)
    return {"correct": np.asarray(correct),
            **{k: np.asarray(getattr(traj, k)) for k in TRAJECTORY_FIELDS}}


def zone_counts(roec_BT, margin_BT, valid_BT) -> tuple[np.ndarray, np.ndarray]:
    """Number of confusion zones (threshold 1, :func:`~dllm_jax.analysis.zones.confusion_zones`)
    and of valid steps inside them, per row (float ``[B]`` each)."""
    zs = [confusion_zones(r, c, 1.0, v)
          for r, c, v in zip(roec_BT, margin_BT, valid_BT, strict=True)]
    return (np.array([len(z) for z in zs], float),
            np.array([sum(x.num_steps for x in z) for z in zs], float))


def _shuffled_counts(h, cm, valid, shuffles: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean zone counts and zone steps per row over ``shuffles`` permutations of each row's
    steps (H and CM permuted together, RoEC recomputed from the permuted H)."""
    rng, null = np.random.default_rng(seed), []
    for _ in range(shuffles):
        perm = np.argsort(rng.random(h.shape), axis=1)
        hh = np.take_along_axis(h, perm, 1)
        null.append(zone_counts(rate_of_entropy_change(hh, valid),
                                np.take_along_axis(cm, perm, 1), valid))
    return tuple(np.mean([q[i] for q in null], 0) for i in (0, 1))


def zone_study(entropy, margin, roec, valid, correct, *, size: AnalysisSize = AnalysisSize(),
               seed: int = 0) -> dict[str, Any]:
    """Zone features vs mean entropy for predicting correctness (cross-validated logistic
    models, 5 folds), and zone counts and lengths against the shuffled-steps null; each
    statistic with a bootstrap 95% interval over trajectories (the out-of-fold scores are
    held fixed in the bootstrap).

    Args:
      entropy, margin, roec: float ``[B, T]`` step profiles (:func:`trajectories`).
      valid: bool ``[B, T]``, the steps that committed something.
      correct: bool ``[B]``, whether each trajectory's answer was right.
    """
    h, cm, r = np.asarray(entropy), np.asarray(margin), np.asarray(roec)
    valid, y = np.asarray(valid, bool), np.asarray(correct).astype(float)
    feats = zone_features(h, cm, r, 1.0, valid)
    X = np.stack([feats[f] for f in FEATURES], 1)
    s_all = cv_scores(X, y, 5, seed)
    s_ent = cv_scores(X[:, [FEATURES.index("mean_entropy")]], y, 5, seed)
    nz, st = zone_counts(r, cm, valid)
    nz0, st0 = _shuffled_counts(h, cm, valid, size.zone_shuffles, seed)
    n = len(y)

    def est(f) -> dict:  # a statistic of the items and its bootstrap interval over items
        return {"mean": float(f(np.arange(n))), "ci95": bootstrap_ci(f, n, None, _CI_BOOT, seed)}

    def auc(sc):
        return lambda i: rank_auc(sc[i], y[i])

    def ratio(a, b):
        return lambda i: a[i].sum() / max(b[i].sum(), 1.0)

    steps = valid.sum(1)
    return {"n": n, "features": list(FEATURES), "zone_shuffles": size.zone_shuffles,
            "accuracy": est(lambda i: y[i].mean()),
            "auc_zone_model": est(auc(s_all)), "auc_mean_entropy": est(auc(s_ent)),
            "auc_zone_model - auc_mean_entropy": est(lambda i: auc(s_all)(i) - auc(s_ent)(i)),
            "zones_per_trajectory": est(lambda i: nz[i].mean()),
            "zones_per_trajectory_shuffled": est(lambda i: nz0[i].mean()),
            "zones_per_trajectory - shuffled": est(lambda i: nz[i].mean() - nz0[i].mean()),
            "steps_per_zone": est(ratio(st, nz)),
            "steps_per_zone_shuffled": est(ratio(st0, nz0)),
            "steps_per_zone - shuffled": est(lambda i: ratio(st, nz)(i) - ratio(st0, nz0)(i)),
            "fraction_of_steps_in_zones": est(ratio(st, steps)),
            "fraction_of_steps_in_zones_shuffled": est(ratio(st0, steps))}


# ------------------------------------------------------------------------------ IMH
@functools.partial(jax.jit, static_argnums=0)
def _order_rows_logp(graphdef, state, tokens_RL, masked_RL, target_RL):
    """Per row, the summed log-prob (MASK excluded from the softmax) of the ``target_RL``
    tokens with the ``masked_RL`` positions fed as MASK."""
    model = nnx.merge(graphdef, state)
    mask_id = model.config.mask_token_id
    logits = aligned(model, jnp.where(masked_RL, mask_id, tokens_RL))
    lp = sampling_log_probs(logits, tokens_RL, mask_id)
    return jnp.sum(jnp.where(target_RL, lp, 0.0), -1)


def order_logp(model, seqs_RL: np.ndarray, rank_RG: np.ndarray, chunk: int = 2048
               ) -> np.ndarray:
    """``log p(x | order)`` ``[R]``: the answer (the last G positions of ``seqs_RL``)
    committed one position per step, position g at step ``rank_RG[:, g]``, each token scored
    with the positions committed at later steps still masked (one forward pass per step)."""
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


def _pass_at(c_PN: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per prompt from its N 0/1 outcomes."""
    return np.array([pass_at_k(c_PN.shape[1], int(x), k) for x in c_PN.sum(1)])


def _order_spread(model, pool, step_map, p: int, per: int, size: AnalysisSize, seed: int
                  ) -> np.ndarray:
    """``log p(x | order)`` ``[P, 1 + orders_per_x]`` for the first pool sample of each
    prompt: along its own order (column 0), then along fresh random orders."""
    a = step_map.shape[1]
    first = np.arange(p) * per
    rng = np.random.default_rng(seed)
    ranks = np.stack([step_map[first]] + [np.argsort(rng.random((p, a)), 1)
                                          for _ in range(size.orders_per_x)], 1)
    return order_logp(model, np.repeat(pool[first], ranks.shape[1], 0),
                      ranks.reshape(-1, a)).reshape(p, -1)


def imh_study(model, task: str = "sudoku", size: AnalysisSize = AnalysisSize(), seed: int = 0
              ) -> dict[str, Any]:
    """IMH (K random-order proposals at temperature 1 per returned sample) on the first
    ``imh_prompts`` test puzzles against random order with K times the samples and against
    best-of-K by path likelihood from that pool (equal forward passes); and how much
    ``log p(x | order)`` varies over random orders of the same ``x``. Per-prompt values with
    bootstrap 95% intervals over prompts."""
    src = TaskSource(task, 0, size.imh_prompts, split="test")
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
    c_rnd = c_rnd.reshape(p, -1)
    v = {"imh_pass1": _pass_at(c_imh, 1), "best_of_k_pass1": _pass_at(c_best, 1),
         "random_pass1": _pass_at(c_rnd, 1), f"imh_pass{n}": _pass_at(c_imh, n),
         f"best_of_k_pass{n}": _pass_at(c_best, n), f"random_pass{n * k}": _pass_at(c_rnd, n * k)}
    for x1, x2 in (("imh_pass1", "best_of_k_pass1"), ("imh_pass1", "random_pass1"),
                   (f"imh_pass{n}", f"random_pass{n * k}"),
                   (f"best_of_k_pass{n}", f"random_pass{n * k}")):
        v[f"{x1} - {x2}"] = v[x1] - v[x2]
    lp = _order_spread(model, pool, np.asarray(out.trajectory.step_map), p, n * k, size, seed)
    v.update({"order_logp_sd_across_orders": lp[:, 1:].std(1, ddof=1),
              "order_logp_range_across_orders": lp[:, 1:].max(1) - lp[:, 1:].min(1),
              "order_logp_own_minus_mean_random": lp[:, 0] - lp[:, 1:].mean(1)})
    mean_lp = lp[:, 1:].mean(1)
    return {"prompts": p, "K": k, "alpha": size.imh_alpha, "imh_samples_per_prompt": n,
            "orders_per_x": size.orders_per_x,
            "forward_passes_per_returned_sample": {"imh": k * a, "best_of_k": k * a, "random": a},
            **{name: boot_mean(x_, size.boot, seed) for name, x_ in v.items()},
            "order_logp_sd_across_x": {"mean": float(mean_lp.std(ddof=1)), "ci95": bootstrap_ci(
                lambda i: mean_lp[i].std(ddof=1), p, None, _CI_BOOT, seed)},
            # Its own order re-scored here vs the sampler's recorded probabilities: they differ
            # by the MASK token's share of the sampler's softmax (excluded when re-scoring).
            "max_abs_own_order_vs_recorded": float(np.abs(lp[:, 0] - lp_conf.reshape(p, -1)[:, 0])
                                                   .max())}


# ------------------------------------------------------------------------------ report
def plot_imh(imh: dict, path: Path) -> Path:
    """Bars of each pass@k in ``imh`` (:func:`imh_study`) with their bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bars = [k for k in imh if k.endswith(tuple("0123456789")) and " - " not in k]
    for i, k in enumerate(bars):
        m, (lo, hi) = imh[k]["mean"], imh[k]["ci95"]
        ax.bar(i, m, color=f"C{i % 3}")
        ax.errorbar(i, m, yerr=[[m - lo], [hi - m]], color="k")
    ax.set_xticks(range(len(bars)), bars, rotation=20, fontsize=8)
    ax.set_ylabel("pass@k (bootstrap 95% over prompts)")
    passes = imh["forward_passes_per_returned_sample"]
    ax.set_title(f"{imh['prompts']} test prompts, K = {imh['K']}, alpha {imh['alpha']}: IMH and "
                 f"best-of-K cost {passes['imh']} forward passes per sample, random order "
                 f"{passes['random']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def fmt(v: dict, key: str = "mean") -> str:
    """``mean [lo, hi]`` (``n/a`` for a statistic that is undefined, e.g. an AUC with one
    class: NaN, or None once through :func:`finite`)."""
    vals = (v[key], *v["ci95"])
    if any(x is None or not math.isfinite(x) for x in vals):
        return "n/a"
    return f"{vals[0]:.3f} [{vals[1]:.3f}, {vals[2]:.3f}]"


def report_sections(zones: dict, imh: dict, model_name: str = "the SFT model") -> str:
    """The "Confusion zones" and "IMH at equal forward passes" report sections (markdown)."""
    lines: list[str] = []
    for title, part in ((f"Confusion zones ({model_name})", zones),
                        ("IMH at equal forward passes", imh)):
        lines += [f"## {title}", "", "| statistic | mean [95% bootstrap] |", "|---|---|"]
        lines += [f"| {k} | {fmt(v)} |" if isinstance(v, dict) and "ci95" in v else
                  f"| {k} | {v} |" for k, v in part.items()]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ a toy model
def quick_sft_model(task: str, out: Path, seed: int = 0, steps: int = 300) -> Path:
    """A tiny SFT model (d=32, one layer) trained ``steps`` steps on ``task``'s train split,
    for toy runs and tests of the analyses; returns its model directory (``out/model``)."""
    prog = SFTProgram(out=str(out), model=ModelSpec(hidden_size=32, num_layers=1),
                      data=DataSpec(task=task, num_train=4000),
                      train=TrainConfig(seed=seed, steps=steps, batch_size=64,
                                        log_every=max(steps // 10, 1),
                                        optim=OptimConfig(lr=3e-3, total_steps=steps,
                                                          schedule="constant",
                                                          warmup_steps=min(50, steps // 10),
                                                          weight_decay=0.01),
                                        checkpoint=CheckpointConfig(every=steps, keep=1)))
    return programs.run_sft(prog, overwrite=True, mesh=None, progress=False)
