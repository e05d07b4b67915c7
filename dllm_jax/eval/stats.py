"""Statistics for comparing training runs and predictors: t-intervals over seeds, paired
differences with a stratified bootstrap and the smallest effect a design detects, ROC AUC,
and a cross-validated logistic model. Used by the study script (docs/studies.md).

Everything is plain NumPy on host arrays; quantiles and ranks come from SciPy (already a
dependency of JAX).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as _sp


def t_interval(x: Sequence[float], level: float = 0.95) -> dict:
    """Mean and two-sided t-interval over independent units (e.g. seeds).

    Returns ``{"seeds": x, "mean", "ci95": [lo, hi]}``; one value gets a zero-width interval.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 1 or not len(x):
        raise ValueError(f"t_interval needs a non-empty 1-D sequence, got shape {x.shape}")
    m = float(x.mean())
    if len(x) < 2:
        return {"seeds": x.tolist(), "mean": m, "ci95": [m, m]}
    h = float(_sp.t.ppf(0.5 + level / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return {"seeds": x.tolist(), "mean": m, "ci95": [m - h, m + h]}


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, strata: Sequence[int] | None,
                 n_boot: int, seed: int) -> list[float]:
    """Percentile 95% interval of ``stat(idx)`` over ``n_boot`` resamples of ``range(n)``,
    drawn with replacement within each stratum (each stratum keeps its size); fixed seed."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap_ci needs n >= 1 and n_boot >= 1, got {n}, {n_boot}")
    rng = np.random.default_rng(seed)
    strata = np.zeros(n, int) if strata is None else np.asarray(strata)
    if strata.shape != (n,):
        raise ValueError(f"strata must have length {n}, got shape {strata.shape}")
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    vals = [stat(np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups]))
            for _ in range(n_boot)]
    return [float(v) for v in np.percentile(vals, [2.5, 97.5])]


def boot_mean(v: Sequence[float], n_boot: int, seed: int) -> dict:
    """Mean over items with a bootstrap 95% interval."""
    v = np.asarray(v, np.float64)
    return {"mean": float(v.mean()),
            "ci95": bootstrap_ci(lambda i: v[i].mean(), len(v), None, n_boot, seed)}


def min_detectable_effect(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true mean difference a two-sided paired t-test on ``n`` units with difference
    sd ``sd`` detects with probability ``power``: ``(t_{1-alpha/2} + t_power) sd / sqrt(n)``
    (the usual normal-shift approximation with t quantiles at n - 1 degrees of freedom)."""
    if n < 2:
        raise ValueError(f"min_detectable_effect needs n >= 2 units, got {n}")
    q = _sp.t.ppf(1 - alpha / 2, n - 1) + _sp.t.ppf(power, n - 1)
    return float(q * sd / math.sqrt(n))


def paired(diff: Sequence[float], strata: Sequence[int] | None, n_boot: int, seed: int) -> dict:
    """Mean paired difference with its bootstrap interval (stratified, e.g. by SFT seed) and,
    from two units on, the paired t-interval, the differences' sd and the 80%-power MDE."""
    d = np.asarray(diff, np.float64)
    n = len(d)
    out = {"mean_diff": float(d.mean()), "n": n,
           "ci95": bootstrap_ci(lambda i: d[i].mean(), n, strata, n_boot, seed)}
    if n > 1:
        sd = float(d.std(ddof=1))
        out.update(t_ci95=t_interval(d)["ci95"], sd_diff=sd, mde80=min_detectable_effect(sd, n))
    return out


def rank_auc(score: Sequence[float], label: Sequence[bool]) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); NaN when a class is
    absent."""
    score, label = np.asarray(score, np.float64), np.asarray(label, bool)
    npos, nneg = int(label.sum()), int((~label).sum())
    if not npos or not nneg:
        return float("nan")
    ranks = _sp.rankdata(score)  # average ranks for ties
    return float((ranks[label].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def logistic_fit(X: np.ndarray, y: np.ndarray, iters: int = 30, ridge: float = 1e-3
                 ) -> np.ndarray:
    """Weights (intercept first) of a ridge-regularised logistic regression, by Newton steps
    on ``sum log-loss + ridge / 2 |w|^2``."""
    X1 = np.c_[np.ones(len(X)), X]
    w = np.zeros(X1.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(X1 @ w, -30, 30)))
        grad = X1.T @ (p - y) + ridge * w
        hess = X1.T @ (X1 * (p * (1 - p))[:, None]) + ridge * np.eye(len(w))
        w = w - np.linalg.solve(hess, grad)
    return w


def cv_scores(X: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold logits of :func:`logistic_fit` (features standardised on each training
    fold): each item is scored by a model that never saw it."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    if X.ndim != 2 or len(X) != len(y) or not 2 <= folds <= len(y):
        raise ValueError(f"cv_scores: X [N, F] and y [N] with 2 <= folds <= N, got "
                         f"{X.shape}, {y.shape}, folds={folds}")
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    out = np.zeros(len(y))
    for f in range(folds):
        tr, te = fold != f, fold == f
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-12
        w = logistic_fit((X[tr] - mu) / sd, y[tr])
        out[te] = np.c_[np.ones(te.sum()), (X[te] - mu) / sd] @ w
    return out
