"""The RL study (dllm_jax.studies.rl, rl_report; scripts/study_rl.py): the paired statistics
against hand computation on made-up runs, the design checks, and the toy size end to end
with its resume. The statistics themselves (dllm_jax.eval.stats) are tested in
tests/eval/test_stats.py."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import numbers_in
from scipy import stats as sp

from dllm_jax.errors import ConfigError
from dllm_jax.studies import rl_report
from dllm_jax.studies.rl import Design, design_for, rl_program, run_study

REPO = Path(__file__).resolve().parents[2]


def _fake(acc: dict[str, list[float]], n: int = 40, seed: int = 0) -> dict:
    """Cached-run shape with, per arm and unit, ``n`` puzzles of which a fraction ``acc`` is
    correct (the same puzzles correct in both orders)."""
    rng = np.random.default_rng(seed)
    units = [(s, r) for s in (0, 1) for r in (0, 1)]

    def scores(p):
        x = np.zeros(n, int)
        x[rng.permutation(n)[:round(p * n)]] = 1
        return {"low_confidence": x.tolist(), "max_s": x.tolist()}

    metrics = {"reward": [0.1] * 40, "zero_var_groups": [0.5] * 40, "loss": [0.0] * 40}
    res = {"design": {"sft_seeds": [0, 1], "rl_seeds": [0, 1], "arms": list(acc)[1:],
                      "boot": 500, "rl_steps": 40},
           "sft": {str(s): {"test": scores(acc["sft"][i]), "best_val": 0.3, "best_step": 100,
                            "steps": 300} for i, s in enumerate((0, 1))},
           "lr": {"lr": 1e-4, "scores": {}, "steps": 5}, "runs": {}}
    for arm in list(acc)[1:]:
        for i, (s, r) in enumerate(units):
            res["runs"][f"{arm}_s{s}_r{r}"] = {"test": scores(acc[arm][i]), "metrics": metrics}
    return res


def test_contrast_matches_hand_computation():
    res = _fake({"sft": [0.2, 0.3], "uniform": [0.4, 0.5, 0.45, 0.6],
                 "sft_more": [0.2, 0.25, 0.3, 0.35]})
    c = rl_report.contrast(res, "uniform", "sft_more", boot=500)
    acc = lambda arm, s, r: np.mean(res["runs"][f"{arm}_s{s}_r{r}"]["test"]["low_confidence"])  # noqa: E731
    d = np.array([acc("uniform", s, r) - acc("sft_more", s, r) for s in (0, 1) for r in (0, 1)])
    half = sp.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert c["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert c["t_ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-12)
    assert c["n"] == 4 and c["units"] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    seed_means = [d[:2].mean(), d[2:].mean()]  # SFT seed 0's two RL seeds, then seed 1's
    half = sp.t.ppf(0.975, 1) * np.std(seed_means, ddof=1) / math.sqrt(2)
    assert c["sft_seed_ci95"] == pytest.approx([np.mean(seed_means) - half,
                                                np.mean(seed_means) + half], abs=1e-12)
    lo, hi = c["puzzle_ci95"]
    assert lo < d.mean() < hi
    # Against the start: each unit's SFT seed, the same puzzles.
    c = rl_report.contrast(res, "uniform", "sft", boot=500)
    start = [0.2, 0.2, 0.3, 0.3]
    assert c["mean_diff"] == pytest.approx(np.mean([0.4, 0.5, 0.45, 0.6]) - np.mean(start),
                                           abs=1e-12)


def test_target_reached_and_missed():
    good = rl_report.summarize(_fake({"sft": [0.2, 0.3], "uniform": [0.5, 0.55, 0.6, 0.62],
                                      "sft_more": [0.2, 0.25, 0.3, 0.35]}))
    assert good["target"]["best_arm"] == "uniform" and good["target"]["met"] is True
    assert good["arms"]["sft"]["seeds"] == pytest.approx([0.2, 0.3])  # one value per SFT seed
    near = rl_report.summarize(_fake({"sft": [0.2, 0.3], "uniform": [0.25, 0.3, 0.3, 0.35],
                                      "sft_more": [0.2, 0.25, 0.3, 0.35]}))
    assert near["target"]["met"] is False  # +0.025 over sft_more is under the +0.05 level
    alone = rl_report.summarize(_fake({"sft": [0.2, 0.3], "uniform": [0.5, 0.5, 0.6, 0.6]}))
    assert alone["target"]["met"] is None and "sft_more" in alone["target"]["why"]
    text = rl_report.report(_fake({"sft": [0.2, 0.3], "uniform": [0.5, 0.5, 0.6, 0.6]}), alone,
                            "# t")
    assert "| uniform - sft | +0.300 |" in text


@pytest.mark.parametrize("kw, msg", [
    (dict(task="addition"), "leak-free split"),
    (dict(arms=("uniform", "ppo")), "arms must include uniform"),
    (dict(rl_check_every=5, inner=2), "multiple of inner"),
])
def test_design_refuses(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        Design(**kw)



def test_countdown_design_and_its_rl_program(tmp_path):
    d = design_for("countdown", rl_seeds=(0,))
    assert (d.task, d.labelled, d.sft_lr, d.rl_seeds) == ("countdown", 4000, 3e-4, (0,))
    assert d.sft_patience * d.sft_check_every == 1000  # the plateau: 1000 steps, no new best
    prog = rl_program(d, "uniform_kl0", str(tmp_path), 1e-4, 30, 0, tmp_path / "rl")
    assert prog.data.task_options == "number_split=rl,max_number=20"
    # Numbers up to 20 (two digits): three numbers, two operators, two parentheses.
    s = prog.resolved().rl.sampler
    assert (s.gen_length, s.steps, s.block_length) == (10, 10, 10)
    assert prog.rl.beta == 0.0 and prog.train.steps == 30
    with pytest.raises(ConfigError, match="leak-free split"):
        design_for("addition")

def test_other_design_in_the_directory_is_refused_before_training(tmp_path):
    (tmp_path / "design.json").write_text(json.dumps({"task": "sudoku", "labelled": 7}))
    with pytest.raises(ConfigError, match="another design"):
        run_study(Design(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["design.json"]


@pytest.mark.slow
def test_quick_study_end_to_end_and_resume(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(
        os.environ.get("DLLM_JAX_TEST_CACHE", tmp_path / "jax_cache"))}
    cmd = [sys.executable, str(REPO / "scripts" / "study_rl.py"), "--quick", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=600, capture_output=True)
    res = json.loads((out / "results.json").read_text())
    summary = res["summary"]
    arms = res["design"]["arms"]
    assert set(summary["arms"]) == {"sft", *arms}
    for a in arms:
        assert len(summary["arms"][a]["seeds"]) == 2  # one SFT seed x two RL seeds
        assert len(res["runs"][f"{a}_s0_r0"]["test"]["low_confidence"]) == 32
    for a in set(arms) - {"sft_more"}:
        assert f"{a} - sft" in summary["contrasts"] and f"{a} - sft_more" in summary["contrasts"]
        m = res["runs"][f"{a}_s0_r0"]["metrics"]
        assert len(m["reward"]) == 4 and {"zero_var_groups", "kl", "clip_frac",
                                          "update_norm"} <= set(m)
    assert res["runs"]["uniform_mu12_s0_r0"]["config"]["inner_iterations"] == 12
    assert res["runs"]["uniform_kl0_s0_r0"]["config"]["beta"] == 0.0
    assert res["runs"]["uniform_s0_r0"]["config"]["beta"] == res["design"]["beta"]
    cal = json.loads((out / "calibration_s0.json").read_text())
    assert cal["ratio"] > 0 and len(cal["rl_step_seconds"]) == cal["rounds"]
    more = res["runs"]["sft_more_s0_r0"]
    assert more["steps"] == max(1, round(res["design"]["rl_steps"] * cal["ratio"]))
    assert summary["target"]["met"] in (True, False)
    assert all(math.isfinite(x) for x in numbers_in(summary))
    assert "| uniform - sft_more |" in (out / "report.md").read_text()
    assert (out / "rl_study.png").stat().st_size > 1000
    # A second invocation trains nothing and writes the same numbers, from the JSON records
    # alone: a finished study needs no checkpoint (the start's is gone and is not rebuilt).
    shutil.rmtree(out / "sft_s0")
    again = subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=300,
                           capture_output=True, text=True)
    assert "SFT seed 0" not in again.stdout and "step 2:" not in again.stdout
    assert not (out / "sft_s0").exists()
    assert json.loads((out / "results.json").read_text())["summary"] == summary
    # The records alone continue a study: the start is retrained to its recorded step and the
    # rerun arm reproduces its record exactly (training is deterministic on one machine).
    first = json.loads((out / "runs" / "uniform_s0_r0.json").read_text())
    (out / "runs" / "uniform_s0_r0.json").unlink()
    again = subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=300,
                           capture_output=True, text=True)
    assert "rebuilding the start" in again.stdout
    assert "was trained on" not in again.stdout  # the record names this machine
    rerun = json.loads((out / "runs" / "uniform_s0_r0.json").read_text())
    assert rerun["test"] == first["test"] and rerun["curve"] == first["curve"]
    assert json.loads((out / "results.json").read_text())["summary"] == summary
    # A start that does not reproduce its record is refused in one line, before any RL.
    shutil.rmtree(out / "sft_s0")
    (out / "runs" / "uniform_s0_r0.json").unlink()
    rec = json.loads((out / "sft_s0.json").read_text())
    rec["test"]["low_confidence"][0] ^= 1
    assert rec["machine"]["cpu"] and rec["machine"]["jax"]
    rec["machine"]["cpu"] = "another CPU"
    (out / "sft_s0.json").write_text(json.dumps(rec))
    bad = subprocess.run(cmd, cwd=REPO, env=env, timeout=300, capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "study_rl: SFT seed 0 does not reproduce its record")
    assert "recorded on another CPU" in bad.stderr and "was trained on" in bad.stdout
