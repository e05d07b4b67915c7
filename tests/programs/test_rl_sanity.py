"""The RL sanity check (scripts/rl_sanity.py --quick --json) as a newcomer runs it: every RL
loss of the registry raises the mean rollout reward on the label-free digitsum task from a
freshly initialised model to the set level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dllm_jax.objectives import loss_names
from dllm_jax.tasks import get_puzzle

REPO = Path(__file__).resolve().parents[2]


def test_digitsum_reward_is_label_free_and_dense():
    task = get_puzzle("digitsum")
    ex = task.generate(0, 3)[0]
    target = sum(int(c) for c in ex.meta["digits"])
    right = [d for d in ("9" * 4, "4444", ex.meta["digits"]) if sum(map(int, d)) == target]
    right.append(task.solution(ex))
    for c in right:
        assert task.verify(ex, c) == 1.0 and task.rl_reward(ex, c) == 1.0
    assert task.rl_reward(ex, "ab") == 0.0
    assert task.rl_reward(ex, "1a") == 0.125  # one digit of four, not all digits
    off = "0000" if target else "1000"
    assert task.verify(ex, off) == 0.0
    assert task.rl_reward(ex, off) == pytest.approx(0.5 + 0.5 * (1 - abs(
        sum(map(int, off)) - target) / 36))


@pytest.mark.slow
def test_rl_sanity_quick_every_loss_learns(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "rl_sanity.py"), "--quick", "--json",
         "--out", str(tmp_path / "sanity")], capture_output=True, text=True, timeout=900,
        env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert sorted(res["losses"]) == loss_names("rl")
    for name, r in res["losses"].items():
        assert r["last10"] >= res["config"]["level"], (name, r["first10"], r["last10"])
        assert r["last10"] >= r["first10"] + 0.2, (name, r["first10"], r["last10"])
        logged = {"reward", "zero_var_groups", "update_norm", "grad_norm"}
        if name != "wd1":  # wd1 is ratio-free and KL-free
            logged |= {"clip_frac", "kl"}
        assert set(r["curve"]) >= logged, (name, sorted(r["curve"]))
        assert len(r["curve"]["reward"]) == res["config"]["rl_steps"]
