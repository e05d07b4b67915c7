"""scripts/study_rl.py at its toy size (``--quick``) end to end. Its
statistics (dllm_jax.eval.stats) are tested in tests/test_stats.py."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("study_rl", REPO / "scripts" / "study_rl.py")
study = importlib.util.module_from_spec(_spec)
sys.modules["study_rl"] = study  # its dataclasses look their module up there
_spec.loader.exec_module(study)


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
def test_quick_study_end_to_end(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(
        os.environ.get("DLLM_JAX_TEST_CACHE", tmp_path / "jax_cache"))}
    subprocess.run([sys.executable, str(REPO / "scripts" / "study_rl.py"), "--quick", "--out",
                    str(out)], check=True, cwd=REPO, env=env, timeout=900)
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "sudoku" and "held-out" in res["primary_endpoint"]
    arms = study.SIZES["quick"].arms
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
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "study_rl.py"), "--quick",
                            "--out", str(out)], check=True, cwd=REPO, env=env, timeout=300,
                           capture_output=True, text=True)
    assert "SFT seed 0 step" not in again.stdout
    res2 = json.loads((out / "results.json").read_text())
    assert res2["arms"] == res["arms"] and res2["paired_vs_uniform"] == res["paired_vs_uniform"]
