"""Evaluation metrics: the unbiased pass@k estimator and mean / standard error."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _check_counts(n: int, c: int, k: int) -> None:
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ValueError(f"pass_at_k: {name} must be an integer, got {v!r}")
    if n < 1:
        raise ValueError(f"pass_at_k: n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021).

    ``1 - C(n-c, k) / C(n, k)`` computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` in log space, so
    no binomial coefficient is ever formed and ``n`` in the thousands stays exact to rounding.

    Args:
      n: samples drawn for the problem (>= 1).
      c: how many of them are correct (0..n).
      k: the k of pass@k (1..n).

    Returns:
      The probability that at least one of ``k`` samples drawn without replacement from the
      ``n`` is correct; exactly 1.0 when ``n - c < k``.

    Raises:
      ValueError: counts out of range.
    """
    _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    if c == 0:
        return 0.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(-np.expm1(np.sum(np.log1p(-k / i))))


def pass_at_k_array(n: Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray,
                    k: int) -> np.ndarray:
    """:func:`pass_at_k` for each problem: ``n_P`` and ``c_P`` are per-problem counts.

    Returns:
      ``[P]`` float64 estimates.
    """
    n_P = np.asarray(n).reshape(-1)
    c_P = np.asarray(c).reshape(-1)
    if n_P.shape != c_P.shape:
        raise ValueError(f"pass_at_k_array: n has shape {n_P.shape}, c has {c_P.shape}")
    return np.array([pass_at_k(int(a), int(b), k) for a, b in zip(n_P, c_P, strict=True)],
                    np.float64)


def mean_and_stderr(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std with ``ddof=1`` over ``sqrt(N)``).

    The standard error of a single value is reported as 0.0 (it is undefined; JSON has no NaN).

    Raises:
      ValueError: no values.
    """
    x = np.asarray(values, np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("mean_and_stderr: no values")
    mean = float(x.mean())
    if x.size == 1:
        return mean, 0.0
    return mean, float(x.std(ddof=1) / math.sqrt(x.size))


def default_ks(n: int) -> list[int]:
    """``1, 2, 4, ...`` up to ``n``, plus ``n`` itself when it is not a power of two."""
    if n < 1:
        raise ValueError(f"default_ks: n must be >= 1, got {n}")
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    if ks[-1] != n:
        ks.append(n)
    return ks
