"""scripts/study_rl.py: its statistics against hand-computed values, and the whole study at
its smallest size (``--smoke``, used only here) end to end."""

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("study_rl", REPO / "scripts" / "study_rl.py")
study = importlib.util.module_from_spec(_spec)
sys.modules["study_rl"] = study  # its dataclasses look their module up there
_spec.loader.exec_module(study)


def test_t_quantile_matches_the_printed_table():
    # Student-t table values (two-sided 95%: p = 0.975; one-sided 80%: p = 0.8).
    for p, df, value in ((0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776),
                         (0.975, 9, 2.262), (0.975, 29, 2.045), (0.8, 4, 0.941),
                         (0.8, 9, 0.883)):
        assert study.t_quantile(p, df) == pytest.approx(value, abs=1e-3)


def test_t_interval_by_hand():
    # mean 2, sample sd 1, n 3: half-width 4.303 / sqrt(3).
    res = study.t_interval([1.0, 2.0, 3.0])
    assert res["mean"] == 2.0
    assert res["ci95"] == pytest.approx([2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)],
                                        abs=1e-3)


def test_rank_auc_equals_counting_pairs():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 60).astype(float)  # many ties
    label = rng.random(60) < 0.4
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0)
             for p, n in itertools.product(score[label], score[~label])]
    assert study.rank_auc(score, label) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert math.isnan(study.rank_auc(score, np.ones(60, bool)))


def test_logistic_fit_zeroes_the_penalised_gradient():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = (X @ [1.0, -2.0, 0.5] + rng.logistic(size=200) > 0).astype(float)
    w = study.logistic_fit(X, y, ridge=1e-3)
    X1 = np.c_[np.ones(200), X]
    p = 1 / (1 + np.exp(-(X1 @ w)))
    assert np.abs(X1.T @ (p - y) + 1e-3 * w).max() < 1e-8


def test_paired_bootstrap_is_seeded_and_stratified():
    d = np.array([0.01, 0.03, -0.02, 0.05, 0.02, 0.04])
    a = study.paired(d, [0, 0, 0, 1, 1, 1], 2000, seed=3)
    assert a == study.paired(d, [0, 0, 0, 1, 1, 1], 2000, seed=3)
    assert a["mean_diff"] == pytest.approx(d.mean())
    assert a["ci95"][0] < d.mean() < a["ci95"][1]
    # Resampling within strata keeps each stratum's count, so an interval over two strata
    # whose differences are constant within each is a single point.
    b = study.paired(np.array([0.1, 0.1, 0.3, 0.3]), [0, 0, 1, 1], 500, seed=0)
    assert b["ci95"] == pytest.approx([0.2, 0.2])


def _numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _numbers(v)
    elif isinstance(x, int | float) and not isinstance(x, bool):
        yield x


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(
        os.environ.get("DLLM_JAX_TEST_CACHE", tmp_path / "jax_cache"))}
    subprocess.run([sys.executable, str(REPO / "scripts" / "study_rl.py"), "--smoke", "--out",
                    str(out)], check=True, cwd=REPO, env=env, timeout=900)
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "sudoku" and "held-out" in res["primary_endpoint"]
    arms = study.SIZES["smoke"].arms
    assert set(res["arms"]) == set(arms) and set(res["paired_vs_uniform"]) == set(arms) - {
        "uniform"}
    for v in res["arms"].values():
        assert len(v["seeds"]) == 2 and all(0 <= s <= 1 for s in v["seeds"])
        lo, hi = v["ci95"]
        assert lo <= v["mean"] <= hi
    for v in res["paired_vs_uniform"].values():
        assert set(v) >= {"mean_diff", "ci95"} and v["ci95"][0] <= v["ci95"][1]
    assert all(math.isfinite(x) for x in _numbers(res))
    # log p(x | its own order) re-scored here equals the sampler's recorded confidences up to
    # the MASK token's share of the sampler's softmax (excluded when re-scoring).
    assert res["imh"]["max_abs_own_order_vs_recorded"] < 0.05
    assert "| uniform |" in (out / "report.md").read_text()
    for png in res["plots"]:
        assert (out / png).stat().st_size > 1000
    # Resuming a finished study recomputes nothing and writes the same numbers.
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "study_rl.py"), "--smoke",
                            "--out", str(out)], check=True, cwd=REPO, env=env, timeout=300,
                           capture_output=True, text=True)
    assert "SFT seed 0 step" not in again.stdout
    res2 = json.loads((out / "results.json").read_text())
    assert res2["arms"] == res["arms"] and res2["paired_vs_uniform"] == res["paired_vs_uniform"]
