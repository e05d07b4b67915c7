"""Summary, plots and report of the RL study (:mod:`dllm_jax.studies.rl`), rebuilt from its
cached runs: per-arm greedy test accuracy over (SFT seed, RL seed) units, paired contrasts
(each RL arm against its SFT start, against ``sft_more`` and against ``uniform``) with a
t-interval over units and a bootstrap over puzzles within units, and whether the target (a
gain of at least ``TARGET`` over both the start and ``sft_more``, with the unit interval above
zero) was reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dllm_jax.eval.stats import paired, t_interval
from dllm_jax.studies.rl import RULES, rule_of

TARGET = 0.05
WINDOW = 30  # RL steps averaged at each end of the per-step metrics


def _units(res: dict, *arms: str) -> list[tuple[int, int]]:
    d = res["design"]
    return [(s, r) for s in d["sft_seeds"] for r in d["rl_seeds"]
            if all(f"{a}_s{s}_r{r}" in res["runs"] for a in arms if a != "sft")
            and str(s) in res["sft"]]


def _scores(res: dict, arm: str, s: int, r: int, rule: str) -> np.ndarray:
    """Per-puzzle test correctness of ``arm`` (``sft``: the start) in one unit."""
    src = res["sft"][str(s)] if arm == "sft" else res["runs"][f"{arm}_s{s}_r{r}"]
    return np.asarray(src["test"][rule], np.float64)


def contrast(res: dict, a: str, b: str, boot: int) -> dict | None:
    """``a - b`` in ``a``'s decoding order (``sft_more`` and ``sft`` as scored in that order
    too), paired over the units both finished: unit means with a t-interval (and a bootstrap
    stratified by SFT seed), a t-interval over SFT seeds (each the mean of its RL seeds: the
    RL seeds of one SFT start are not independent of each other), and per-puzzle differences
    bootstrapped within units."""
    units = _units(res, a, b)
    if not units:
        return None
    rule = rule_of(a)
    per = [_scores(res, a, s, r, rule) - _scores(res, b, s, r, rule) for s, r in units]
    out = paired([p.mean() for p in per], [s for s, _ in units], boot, 0)
    puzzles = paired(np.concatenate(per), np.repeat(np.arange(len(per)), [len(p) for p in per]),
                     min(boot, 2000), 0)
    seeds = sorted({s for s, _ in units})
    by_seed = [np.mean([p.mean() for (s, _), p in zip(units, per, strict=True) if s == seed])
               for seed in seeds]
    out.update(units=units, rule=rule, puzzle_ci95=puzzles["ci95"],
               sft_seed_ci95=t_interval(by_seed)["ci95"] if len(seeds) > 1 else None)
    return out


def summarize(res: dict, boot: int | None = None) -> dict[str, Any]:
    boot = boot or res["design"]["boot"]
    arms = [a for a in res["design"]["arms"] if _units(res, a)]
    out: dict[str, Any] = {"arms": {}, "contrasts": {}, "lr": res["lr"]}
    for a in ["sft", *arms]:
        units = _units(res, a)
        if a == "sft":  # one start per SFT seed (the RL seeds share it)
            units = [u for u in units if u[1] == res["design"]["rl_seeds"][0]]
        by_rule = {r: t_interval([_scores(res, a, s, u, r).mean() for s, u in units])
                   for r in RULES}
        out["arms"][a] = {"rule": rule_of(a), "units": units, **by_rule[rule_of(a)],
                          "by_rule": by_rule}
    rl_arms = [a for a in arms if a != "sft_more"]
    for a in rl_arms:
        for b in ("sft", "sft_more", "uniform"):
            if b != a and (b == "sft" or b in arms) and (c := contrast(res, a, b, boot)):
                out["contrasts"][f"{a} - {b}"] = c
    out["target"] = target(out, rl_arms)
    out["metrics"] = {a: metric_ends(res, a) for a in rl_arms}
    return out


def target(summary: dict, rl_arms: list[str]) -> dict:
    """The best RL arm (highest mean test accuracy) and whether it gains at least ``TARGET``
    over its start and over ``sft_more`` with the lower end of the t-interval over SFT seeds
    (over units with one SFT seed) above zero."""
    if not rl_arms:
        return {"met": None, "why": "no RL arm finished"}
    best = max(rl_arms, key=lambda a: summary["arms"][a]["mean"])
    checks = {}
    for b in ("sft", "sft_more"):
        c = summary["contrasts"].get(f"{best} - {b}")
        ci = None if c is None else (c.get("sft_seed_ci95") or c.get("t_ci95"))
        checks[b] = None if ci is None else bool(c["mean_diff"] >= TARGET and ci[0] > 0)
    met = None if None in checks.values() else all(checks.values())
    return {"best_arm": best, "level": TARGET, "checks": checks, "met": met,
            "why": "needs sft_more and at least two units" if met is None else ""}


def metric_ends(res: dict, arm: str) -> dict[str, list[float]]:
    """Per-step metric means over units, first and last ``WINDOW`` RL steps."""
    rows = [res["runs"][f"{arm}_s{s}_r{r}"]["metrics"] for s, r in _units(res, arm)]
    return {k: [float(np.mean([np.mean(m[k][:WINDOW]) for m in rows])),
                float(np.mean([np.mean(m[k][-WINDOW:]) for m in rows]))]
            for k in rows[0] if k != "loss"}


def fmt(v: dict, key: str = "mean", ci: str = "ci95") -> str:
    lo, hi = v.get(ci, (None, None))
    return f"{v[key]:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo is not None else f"{v[key]:+.3f}"


def report(res: dict, summary: dict, header: str) -> str:
    d = res["design"]
    lines = [header, "", f"Design: {d}", "", f"RL learning rate {summary['lr']['lr']:g}, chosen "
             f"on validation after {summary['lr']['steps']} uniform steps from SFT seed "
             f"{d['sft_seeds'][0]}: {summary['lr']['scores']}.", "",
             "| arm | order | greedy test accuracy, mean [95% t over units] | units |",
             "|---|---|---|---|"]
    for a, v in summary["arms"].items():
        lines.append(f"| {a} | {v['rule']} | {v['mean']:.3f} [{v['ci95'][0]:.3f}, "
                     f"{v['ci95'][1]:.3f}] | {len(v['units'])} |")
    lines += ["", "| contrast (paired, in the first arm's order) | mean diff | 95% t over units "
              "| 95% t over SFT seeds | 95% bootstrap over puzzles | units |",
              "|---|---|---|---|---|---|"]

    def span(ci) -> str:
        return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "n/a"

    for name, c in summary["contrasts"].items():
        lines.append(f"| {name} | {c['mean_diff']:+.3f} | {span(c.get('t_ci95'))} | "
                     f"{span(c.get('sft_seed_ci95'))} | {span(c['puzzle_ci95'])} | {c['n']} |")
    t = summary["target"]
    lines += ["", f"Target (best RL arm >= +{TARGET:.2f} over its start and over sft_more, the "
              f"interval over SFT seeds above zero): {t}", "", "SFT starts: " + "; ".join(
                  f"seed {s}: best validation {v['best_val']:.3f} at step {v['best_step']} of "
                  f"{v['steps']}" for s, v in res["sft"].items()), "",
              f"Per-step metrics, mean over units, first -> last {WINDOW} RL steps:", ""]
    for a, m in summary["metrics"].items():
        lines.append(f"- {a}: " + ", ".join(f"{k} {x:.3f} -> {y:.3f}" for k, (x, y) in m.items()))
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    """SFT validation curves (best checkpoint marked), mean rollout reward per RL step
    (10-step running mean, mean over units) and validation accuracy during RL per arm
    (``sft_more`` against its share of the compute-matched run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for s, v in res["sft"].items():
        c = np.asarray([x[:2] for x in v["curve"]])
        axes[0].plot(c[:, 0], c[:, 1], "o-", ms=3, label=f"SFT seed {s}")
        axes[0].plot([v["best_step"]], [v["best_val"]], "k*", ms=9)
    axes[0].set(xlabel="SFT step", ylabel="validation accuracy", title="SFT (best marked *)")
    steps = res["design"]["rl_steps"]
    for i, a in enumerate(res["design"]["arms"]):
        keys = [k for k in res["runs"] if k.startswith(a + "_s")]
        if not keys:
            continue
        if a != "sft_more":
            r = np.mean([res["runs"][k]["metrics"]["reward"] for k in keys], 0)
            axes[1].plot(np.convolve(r, np.ones(10) / 10, mode="valid"), color=f"C{i}", label=a)
        curves = [np.asarray(res["runs"][k]["curve"], np.float64) for k in keys]
        x = curves[0][:, 0] * (steps / curves[0][-1, 0] if a == "sft_more" else 1)
        axes[2].plot(x, np.mean([c[:, 1] for c in curves], 0), "o-", ms=3, color=f"C{i}",
                     label=a)
    axes[1].set(xlabel="RL step", ylabel="mean rollout reward (10-step mean)",
                title="RL rollouts (mean over units)")
    axes[2].set(xlabel="RL step (sft_more: same share of its compute)",
                ylabel="validation accuracy", title="Validation during RL (mean over units)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
