"""The study statistics against exact enumeration, first-order optimality, textbook values and
simulation."""

import numpy as np
import pytest
from scipy import stats as sp

from dllm_jax.eval import stats

RNG = np.random.default_rng(7)


def test_t_interval_textbook_value():
    # mean 3, sd sqrt(2.5), t(0.975, df=4) = 2.776445 (tables): half width 1.963243.
    out = stats.t_interval([1, 2, 3, 4, 5])
    assert out["mean"] == 3.0
    np.testing.assert_allclose(out["ci95"], [3 - 1.963243, 3 + 1.963243], atol=1e-6)
    assert stats.t_interval([0.4])["ci95"] == [0.4, 0.4]
    with pytest.raises(ValueError, match="non-empty"):
        stats.t_interval([])


def test_rank_auc_equals_pair_enumeration_with_ties():
    score = RNG.integers(0, 5, 60).astype(float)  # many ties
    label = RNG.random(60) < 0.4
    pos, neg = score[label], score[~label]
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p in pos for q in neg]
    assert stats.rank_auc(score, label) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert np.isnan(stats.rank_auc(score, np.ones(60, bool)))


def test_bootstrap_keeps_strata_sizes():
    strata = np.array([0] * 3 + [1] * 7)
    # Each resample draws within strata, so the share of stratum 1 never moves.
    lo, hi = stats.bootstrap_ci(lambda i: (strata[i] == 1).mean(), 10, strata, 200, 0)
    assert lo == hi == 0.7
    # Unstratified it does.
    lo, hi = stats.bootstrap_ci(lambda i: (strata[i] == 1).mean(), 10, None, 200, 0)
    assert lo < 0.7 < hi


def test_logistic_fit_is_a_stationary_point():
    X = RNG.normal(size=(200, 3))
    y = (X @ [1.0, -2.0, 0.5] + RNG.normal(size=200) > 0).astype(float)
    w = stats.logistic_fit(X, y, ridge=1e-3)
    X1 = np.c_[np.ones(200), X]
    p = 1 / (1 + np.exp(-X1 @ w))
    np.testing.assert_allclose(X1.T @ (p - y) + 1e-3 * w, 0.0, atol=1e-8)


def test_cv_scores_are_out_of_fold():
    X = RNG.normal(size=(50, 2))
    y = (X[:, 0] + 0.3 * RNG.normal(size=50) > 0).astype(float)
    base = stats.cv_scores(X, y, 5, 0)
    y2 = y.copy()
    y2[11] = 1 - y2[11]  # item 11's own label never trains the model that scores it
    moved = stats.cv_scores(X, y2, 5, 0)
    assert moved[11] == pytest.approx(base[11], abs=1e-12)
    assert np.abs(moved - base).max() > 1e-6  # it does train the other folds' models


def test_min_detectable_effect_has_the_stated_power():
    n, sd = 8, 1.0
    mde = stats.min_detectable_effect(sd, n)
    sims = RNG.normal(mde, sd, size=(4000, n))
    power = (sp.ttest_1samp(sims, 0.0, axis=1).pvalue < 0.05).mean()
    assert 0.74 < power < 0.84
    out = stats.paired(sims[0], None, 100, 0)
    assert out["mde80"] == pytest.approx(stats.min_detectable_effect(out["sd_diff"], n))
    assert "t_ci95" not in stats.paired([0.1], None, 10, 0)


def test_t_interval_matches_the_printed_table():
    # Student-t table, two-sided 95%: t(0.975, df) for n = df + 1 values with sample sd 1.
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)):
        x = np.arange(df + 1, dtype=float)
        x = x / x.std(ddof=1)
        lo, hi = stats.t_interval(x)["ci95"]
        assert (hi - lo) / 2 * np.sqrt(df + 1) == pytest.approx(value, abs=1e-3)


def test_paired_bootstrap_is_seeded_and_stratified():
    d = np.array([0.01, 0.03, -0.02, 0.05, 0.02, 0.04])
    a = stats.paired(d, [0, 0, 0, 1, 1, 1], 2000, seed=3)
    assert a == stats.paired(d, [0, 0, 0, 1, 1, 1], 2000, seed=3)
    assert a["mean_diff"] == pytest.approx(d.mean())
    assert a["ci95"][0] < d.mean() < a["ci95"][1]
    # Resampling within strata keeps each stratum's count, so an interval over two strata
    # whose differences are constant within each is a single point.
    b = stats.paired(np.array([0.1, 0.1, 0.3, 0.3]), [0, 0, 1, 1], 500, seed=0)
    assert b["ci95"] == pytest.approx([0.2, 0.2])
