"""Denoising-trajectory analysis: step metrics, z-scores and confusion zones (docs/analysis.md).

Inputs are the sampler's :class:`dllm_jax.sampling.Trajectory` arrays (or any ``[B, T]``
profiles). Everything here is NumPy on the host: trajectories are small, and analysis runs
after sampling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def step_metrics(probs_TNV: np.ndarray, masked_TN: np.ndarray, *, relative_roec: bool = False
                 ) -> dict[str, np.ndarray]:
    """``H_t``, ``CM_t`` and ``RoEC_t`` from per-step distributions over N positions.

    Args:
      probs_TNV: the model's distribution at each step and position.
      masked_TN: which positions are still masked (the set ``M_t``) at each step.
      relative_roec: divide ``|H_t - H_{t-1}|`` by ``H_{t-1} + 1e-8``.
    """
    p = np.asarray(probs_TNV, np.float64)
    w = np.asarray(masked_TN, np.float64)
    ent = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    top2 = -np.sort(-p, axis=-1)[..., :2]
    marg = top2[..., 0] - top2[..., 1]
    denom = np.maximum(w.sum(-1), 1.0)
    h = (ent * w).sum(-1) / denom
    cm = (marg * w).sum(-1) / denom
    return {"entropy": h, "margin": cm, "roec": roec(h, relative=relative_roec)}


def roec(entropy_T: np.ndarray, *, relative: bool = False) -> np.ndarray:
    """Rate of entropy change ``|H_t - H_{t-1}|`` along the last axis, 0 at the first step."""
    h = np.asarray(entropy_T, np.float64)
    d = np.abs(np.diff(h, axis=-1))
    if relative:
        d = d / (h[..., :-1] + 1e-8)
    return np.concatenate([np.zeros_like(h[..., :1]), d], axis=-1)


def zscore(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``(x - mean) / std`` along ``axis`` (population std); 0 where the std is 0."""
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=axis, keepdims=True)
    sd = x.std(axis=axis, keepdims=True)
    return np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class Zone:
    """A run of steps ``start .. end - 1`` flagged as confused."""

    start: int
    end: int
    peak: float  # largest z-score inside the zone

    @property
    def length(self) -> int:
        return self.end - self.start


def confusion_zones(roec_T: np.ndarray, margin_T: np.ndarray, threshold: float = 1.0
                    ) -> list[Zone]:
    """Runs of steps where ``z(RoEC_t)`` or ``z(1 - CM_t)`` exceeds ``threshold`` (one row)."""
    zr = zscore(np.asarray(roec_T, np.float64))
    zu = zscore(1.0 - np.asarray(margin_T, np.float64))
    score = np.maximum(zr, zu)
    flag = score > threshold
    zones, t = [], 0
    while t < len(flag):
        if flag[t]:
            s = t
            while t < len(flag) and flag[t]:
                t += 1
            zones.append(Zone(s, t, float(score[s:t].max())))
        else:
            t += 1
    return zones


def zone_features(entropy_BT: np.ndarray, margin_BT: np.ndarray, roec_BT: np.ndarray,
                  threshold: float = 1.0) -> dict[str, np.ndarray]:
    """Per-row summaries of the zones and profiles, used to predict correctness."""
    rows = []
    for h, cm, r in zip(np.asarray(entropy_BT), np.asarray(margin_BT), np.asarray(roec_BT),
                        strict=True):
        zones = confusion_zones(r, cm, threshold)
        in_zone = np.zeros(len(h), bool)
        for z in zones:
            in_zone[z.start:z.end] = True
        rows.append((len(zones), float(in_zone.mean()), float(np.mean(h)), float(np.mean(cm)),
                     float(np.max(r)) if len(r) else 0.0,
                     float(np.mean(1 - cm[in_zone])) if in_zone.any() else 0.0))
    arr = np.asarray(rows, np.float64).reshape(-1, 6)
    names = ("num_zones", "zone_fraction", "mean_entropy", "mean_margin", "max_roec",
             "zone_uncertainty")
    return {n: arr[:, i] for i, n in enumerate(names)}


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for predicting ``label`` (Mann-Whitney, ties
    counted half); NaN when one class is absent."""
    score = np.asarray(score, np.float64)
    label = np.asarray(label).astype(bool)
    pos, neg = score[label], score[~label]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def zone_report(trajectory, correct: Sequence[bool], threshold: float = 1.0) -> dict:
    """How well each zone statistic predicts correctness (AUC of ``-feature`` for "correct",
    so values above 0.5 mean more confusion goes with wrong answers)."""
    feats = zone_features(np.asarray(trajectory.entropy), np.asarray(trajectory.margin),
                          np.asarray(trajectory.roec), threshold)
    correct = np.asarray(correct, bool)
    acc = float(correct.mean()) if len(correct) else 0.0
    out = {"num_rows": int(len(correct)), "accuracy": acc,
           "mean_num_zones": float(feats["num_zones"].mean()),
           "mean_zone_fraction": float(feats["zone_fraction"].mean()), "auc": {}}
    for name, vals in feats.items():
        sign = 1.0 if name == "mean_margin" else -1.0  # high margin = confident = correct
        out["auc"][name] = auc(sign * vals, correct)
    return out


def plot_trajectory(trajectory, path: str, row: int = 0, threshold: float = 1.0,
                    title: str | None = None) -> list[Zone]:
    """Heat map of per-position commit step and confidence, and ``H_t``, ``CM_t``,
    ``RoEC_t`` over steps with the confusion zones shaded; writes a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    smap = np.asarray(trajectory.step_map)[row]
    conf = np.asarray(trajectory.confidence)[row]
    h = np.asarray(trajectory.entropy)[row]
    cm = np.asarray(trajectory.margin)[row]
    r = np.asarray(trajectory.roec)[row]
    zones = confusion_zones(r, cm, threshold)
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), height_ratios=(1, 1, 2))
    for ax, data, label, cmap in ((axes[0], smap, "commit step", "viridis"),
                                  (axes[1], conf, "confidence", "magma")):
        im = ax.imshow(data[None, :], aspect="auto", cmap=cmap)
        ax.set_yticks([])
        ax.set_ylabel(label)
        fig.colorbar(im, ax=ax, fraction=0.02)
    axes[1].set_xlabel("generated position")
    steps = np.arange(len(h))
    ax = axes[2]
    ax.plot(steps, h, label="H_t (entropy)")
    ax.plot(steps, cm, label="CM_t (margin)")
    ax.plot(steps, r, label="RoEC_t")
    for z in zones:
        ax.axvspan(z.start - 0.5, z.end - 0.5, color="red", alpha=0.15)
    ax.set_xlabel("denoising step")
    ax.legend(loc="upper right")
    ax.set_title(f"confusion zones (z > {threshold}): {len(zones)}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return zones
