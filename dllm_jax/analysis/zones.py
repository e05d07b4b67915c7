"""Denoising-trajectory analysis: step metrics, z-scores and confusion zones (docs/analysis.md).

Inputs are the sampler's :class:`dllm_jax.sampling.Trajectory` arrays (or any ``[B, T]``
profiles). A step that committed nothing is *invalid* (``Trajectory.valid`` is False): it is
left out of every z-score, zone and feature here, so padding a trajectory with such steps
changes no statistic. ``valid=None`` means every step is valid. Everything here is NumPy on
the host: trajectories are small, and analysis runs after sampling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def _valid(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, bool)
    valid = np.asarray(valid, bool)
    if valid.shape != shape:
        raise ValueError(f"valid has shape {valid.shape}, the profiles {shape}")
    return valid


def step_metrics(probs_TNV: np.ndarray, masked_TN: np.ndarray, *, valid_T: np.ndarray | None = None,
                 steps_per_block: int | None = None, relative_roec: bool = False
                 ) -> dict[str, np.ndarray]:
    """``H_t``, ``CM_t`` and ``RoEC_t`` from per-step distributions over N positions.

    Args:
      probs_TNV: the model's distribution at each step and position.
      masked_TN: which positions are still masked (the set ``M_t``) at each step.
      valid_T: which steps committed something (None: all); ``H`` and ``CM`` are 0 elsewhere.
      steps_per_block: steps of one block (None: one block); RoEC restarts at each block.
      relative_roec: see :func:`roec`.
    """
    p = np.asarray(probs_TNV, np.float64)
    w = np.asarray(masked_TN, np.float64)
    valid = _valid(valid_T, p.shape[:1])
    ent = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    top2 = -np.sort(-p, axis=-1)[..., :2]
    marg = top2[..., 0] - top2[..., 1]
    denom = np.maximum(w.sum(-1), 1.0)
    h = np.where(valid, (ent * w).sum(-1) / denom, 0.0)
    cm = np.where(valid, (marg * w).sum(-1) / denom, 0.0)
    return {"entropy": h, "margin": cm, "valid": valid,
            "roec": roec(h, valid, steps_per_block=steps_per_block, relative=relative_roec)}


def roec(entropy_T: np.ndarray, valid_T: np.ndarray | None = None, *,
         steps_per_block: int | None = None, relative: bool = False) -> np.ndarray:
    """Rate of entropy change over consecutive valid steps, along the last axis.

    ``RoEC_t = |H_t - H_t'|`` with ``t'`` the previous valid step of the same block; 0 at the
    first valid step of each block (blocks of ``steps_per_block`` steps; None: one block) and
    at invalid steps. ``relative`` divides by ``H_t' + 1e-8``.
    """
    h = np.asarray(entropy_T, np.float64)
    valid = _valid(valid_T, h.shape)
    t = np.arange(h.shape[-1])
    spb = steps_per_block or max(h.shape[-1], 1)
    if h.shape[-1] % spb:
        raise ValueError(f"{h.shape[-1]} steps are not whole blocks of {spb}")
    last = np.maximum.accumulate(np.where(valid, t, -1), axis=-1)  # last valid step <= t
    prev = np.concatenate([np.full_like(last[..., :1], -1), last[..., :-1]], axis=-1)
    h_prev = np.take_along_axis(h, np.maximum(prev, 0), axis=-1)
    d = np.abs(h - h_prev)
    if relative:
        d = d / (h_prev + 1e-8)
    return np.where(valid & (prev >= t // spb * spb), d, 0.0)


def zscore(x: np.ndarray, axis: int = -1, valid: np.ndarray | None = None) -> np.ndarray:
    """``(x - mean) / std`` along ``axis`` over the valid entries (population std); 0 where the
    std is 0 and at invalid entries."""
    x = np.asarray(x, np.float64)
    valid = _valid(valid, x.shape)
    w = valid.astype(np.float64)
    n = np.maximum(w.sum(axis=axis, keepdims=True), 1.0)
    mu = (x * w).sum(axis=axis, keepdims=True) / n
    sd = np.sqrt((((x - mu) * w) ** 2).sum(axis=axis, keepdims=True) / n)
    return np.where(valid & (sd > 0), (x - mu) / np.where(sd > 0, sd, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class Zone:
    """A run of confused valid steps: steps ``start .. end - 1`` (invalid steps inside the
    range do not break it); ``num_steps`` valid steps, ``peak`` the largest z-score."""

    start: int
    end: int
    num_steps: int
    peak: float


def confusion_zones(roec_T: np.ndarray, margin_T: np.ndarray, threshold: float = 1.0,
                    valid_T: np.ndarray | None = None) -> list[Zone]:
    """Runs of valid steps where ``z(RoEC_t)`` or ``z(1 - CM_t)`` exceeds ``threshold`` (one
    row; z-scores over the valid steps)."""
    r = np.asarray(roec_T, np.float64)
    steps = np.flatnonzero(_valid(valid_T, r.shape))
    score = np.maximum(zscore(r[steps]), zscore(1.0 - np.asarray(margin_T, np.float64)[steps]))
    flag = score > threshold
    zones, i = [], 0
    while i < len(flag):
        if flag[i]:
            s = i
            while i < len(flag) and flag[i]:
                i += 1
            zones.append(Zone(int(steps[s]), int(steps[i - 1]) + 1, i - s,
                              float(score[s:i].max())))
        else:
            i += 1
    return zones


def _row_features(h: np.ndarray, cm: np.ndarray, r: np.ndarray, valid: np.ndarray,
                  threshold: float) -> tuple[float, ...]:
    zones = confusion_zones(r, cm, threshold, valid)
    h, cm, r = h[valid], cm[valid], r[valid]
    if not len(h):
        return (0, 0.0, 0.0, 0.0, 0.0, 0.0)
    in_zone = np.zeros(len(valid), bool)
    for z in zones:
        in_zone[z.start:z.end] = True
    in_zone = in_zone[valid]
    return (len(zones), float(in_zone.mean()), float(h.mean()), float(cm.mean()),
            float(r.max()), float(np.mean(1 - cm[in_zone])) if in_zone.any() else 0.0)


FEATURES = ("num_zones", "zone_fraction", "mean_entropy", "mean_margin", "max_roec",
            "zone_uncertainty")


def zone_features(entropy_BT: np.ndarray, margin_BT: np.ndarray, roec_BT: np.ndarray,
                  threshold: float = 1.0, valid_BT: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
    """Per-row summaries over the valid steps, used to predict correctness: number of zones,
    fraction of valid steps inside zones, mean ``H``, mean ``CM``, maximum RoEC, mean
    ``1 - CM`` inside zones (0 for a row without valid steps or zones)."""
    h = np.asarray(entropy_BT, np.float64)
    valid = _valid(valid_BT, h.shape)
    rows = [_row_features(*row, threshold) for row in zip(
        h, np.asarray(margin_BT, np.float64), np.asarray(roec_BT, np.float64), valid,
        strict=True)]
    arr = np.asarray(rows, np.float64).reshape(-1, len(FEATURES))
    return {n: arr[:, i] for i, n in enumerate(FEATURES)}


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
    so values above 0.5 mean more confusion goes with wrong answers); invalid steps of the
    trajectory are left out."""
    feats = zone_features(np.asarray(trajectory.entropy), np.asarray(trajectory.margin),
                          np.asarray(trajectory.roec), threshold, np.asarray(trajectory.valid))
    correct = np.asarray(correct, bool)
    acc = float(correct.mean()) if len(correct) else 0.0
    out = {"num_rows": int(len(correct)), "accuracy": acc,
           "mean_num_zones": float(feats["num_zones"].mean()),
           "mean_zone_fraction": float(feats["zone_fraction"].mean()), "auc": {}}
    for name, vals in feats.items():
        sign = 1.0 if name == "mean_margin" else -1.0  # high margin = confident = correct
        out["auc"][name] = auc(sign * vals, correct)
    return out

