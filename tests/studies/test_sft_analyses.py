"""dllm_jax.studies.sft_analyses (the confusion-zone and IMH analyses of an SFT model) and
scripts/study_sft_analyses.py end to end."""

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numbers_in

from dllm_jax.programs.datasources import TaskSource
from dllm_jax.sampling import LLaDAConfig, generate
from dllm_jax.studies import sft_analyses as sa

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "study_sft_analyses.py"


def test_order_logp_matches_a_step_loop_and_the_sampler_record(tiny_llada):
    """``order_logp`` along a sample's own order equals a plain per-step loop over the
    model's logits (MASK left out of the softmax), and the sampler's recorded confidences
    equal it plus the MASK token's share, ``sum_t log(1 - p_t(MASK))``, which a random model
    leaves far from 0."""
    model, mask = tiny_llada, tiny_llada.config.mask_token_id
    src = TaskSource("sudoku", 0, 3, split="test")
    p_len, a = src.prompt_length, src.answer_length
    cfg = LLaDAConfig(steps=a, gen_length=a, block_length=a, remasking="random",
                      temperature=1.0)
    out = generate(model, src.prompts(np.arange(3)), config=cfg, key=5, record=True)
    seqs, order = np.asarray(out.sequences), np.asarray(out.trajectory.step_map)
    assert sorted(order[0]) == list(range(a))  # one position per step
    ref, mask_share = np.zeros(3), np.zeros(3)
    for t in range(a):  # the canvas before step t: positions committed at steps >= t masked
        canvas = seqs.copy()
        canvas[:, p_len:][order >= t] = mask
        logits = np.asarray(model(jnp.asarray(canvas)), np.float64)[:, p_len:]
        for r in range(3):
            g = int(np.flatnonzero(order[r] == t)[0])
            z = logits[r, g]
            log_all = z - z.max() - np.log(np.exp(z - z.max()).sum())
            keep = np.arange(len(z)) != mask
            zk = z[keep]
            ref[r] += z[seqs[r, p_len + g]] - zk.max() - np.log(np.exp(zk - zk.max()).sum())
            mask_share[r] += np.log1p(-np.exp(log_all[mask]))
    got = sa.order_logp(model, seqs, order)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    recorded = np.log(np.asarray(out.trajectory.confidence, np.float64)).sum(1)
    np.testing.assert_allclose(recorded, ref + mask_share, atol=1e-4)
    assert np.abs(mask_share).min() > 0.05  # so the identity above is not trivially met


def test_zone_counts_by_hand():
    """Zones are runs of valid steps with z(RoEC) or z(1 - CM) above 1 (population z-scores
    over the valid steps; docs/analysis.md). The expectations are worked out by hand."""
    T, c = 8, [0.9] * 8
    roec = [[0, 6, 0, 0, 0, 0, 6, 6],   # mean 2.25, sd 2.905: z(6) = 1.29, z(0) = -0.77
            [0] * 8,                     # sd 0: z = 0 everywhere
            [0, 5, 99, 5, 0, 0, 0, 0],   # step 2 invalid; valid mean 10/7, sd 2.259: z(5) = 1.58
            [0, 0, 6, 0, 0, 0, 0, 0],    # mean 0.75, sd 1.984: z(6) = 2.65
            [0] * 8]
    margin = [c, c[:7] + [0.1],          # 1 - CM = 0.1 x 7, 0.9: z(0.9) = 2.65
              c, c[:3] + [0.1] + c[4:],  # z(1 - CM) = 2.65 at step 3
              c]
    valid = np.ones((5, T), bool)
    valid[2, 2] = False
    n_zones, n_steps = sa.zone_counts(np.array(roec, float), np.array(margin), valid)
    # row 0: step 1 and steps 6-7; row 1: step 7; row 2: steps 1 and 3 (the invalid step 2
    # between them does not break the run); row 3: step 2 (RoEC) then step 3 (CM), one run.
    np.testing.assert_array_equal(n_zones, [2, 1, 1, 1, 0])
    np.testing.assert_array_equal(n_steps, [3, 1, 2, 2, 0])


def test_analysis_size_refuses_bad_values():
    with pytest.raises(ValueError, match="imh_prompts"):
        sa.AnalysisSize(imh_prompts=0)
    with pytest.raises(ValueError, match="orders_per_x"):
        sa.AnalysisSize(orders_per_x=1)


def _script():
    spec = importlib.util.spec_from_file_location("study_sft_analyses", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv, says", [
    (["--model", "/nonexistent/model"], "not a directory"),
    (["--quick", "--task", "nosuchtask"], "nosuchtask"),
    ([], "--model DIR is required"),
])
def test_script_refuses_bad_input_in_one_line(argv, says, tmp_path):
    with pytest.raises(SystemExit) as e:
        _script().main([*argv, "--out", str(tmp_path / "out")])
    msg = str(e.value.code)
    assert says in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.slow
def test_quick_script_end_to_end(tmp_path):
    """``--quick`` trains a toy model and runs both analyses. Digit sum, not Sudoku: the toy
    model gets some but not all digit-sum answers right (on Sudoku it gets none), so every
    AUC is defined."""
    out = tmp_path / "an"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(
        os.environ.get("DLLM_JAX_TEST_CACHE", tmp_path / "jax_cache"))}
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--task", "digitsum", "--out",
                    str(out)], check=True, cwd=REPO, env=env, timeout=600)
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "digitsum" and res["size"] == dataclasses.asdict(sa.QUICK)
    assert Path(res["model"]) == out / "sft" / "model"
    z, imh = res["zones"], res["imh"]
    assert z["n"] == sa.QUICK.num_test and 0 < z["accuracy"]["mean"] < 1
    for k in ("auc_zone_model", "auc_mean_entropy", "zones_per_trajectory - shuffled",
              "steps_per_zone - shuffled", "fraction_of_steps_in_zones"):
        lo, hi = z[k]["ci95"]
        assert lo <= z[k]["mean"] <= hi
    assert imh["prompts"] == sa.QUICK.imh_prompts and imh["K"] == sa.QUICK.imh_candidates
    for k in ("imh_pass1", "best_of_k_pass1", "random_pass1", "imh_pass2", "random_pass8",
              "order_logp_sd_across_orders"):
        assert imh[k]["ci95"][0] <= imh[k]["mean"] <= imh[k]["ci95"][1]
    # log p(x | its own order) re-scored equals the sampler's recorded confidences up to the
    # MASK token's share of the sampler's softmax, which a trained model makes small.
    assert imh["max_abs_own_order_vs_recorded"] < 0.05
    nums = list(numbers_in(res))
    assert nums and all(math.isfinite(x) for x in nums) and "null" not in json.dumps(res)
    report = (out / "report.md").read_text()
    assert "## Confusion zones" in report and "## IMH at equal forward passes" in report
    assert "n/a" not in report
    assert (out / "study_imh.png").stat().st_size > 1000
