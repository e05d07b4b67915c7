"""The RL loop end to end on a tiny model: every loss/selector path runs through the Trainer,
and RL raises a simple reward."""

import json

import numpy as np
import pytest

from dllm_jax.train.rl import RLConfig, RolloutBatcher, make_rl_loss
from dllm_jax.sampling import LLaDAConfig
from helpers import tiny_model
from dllm_jax.train import OptimConfig, TrainConfig, Trainer

TARGET = 7


def _prompts(step):
    rng = np.random.default_rng(step)
    return rng.integers(2, 60, (2, 4))


def _reward(step, completions):
    return (completions == TARGET).mean(1)


def _run(tmp_path, steps=2, lr=1e-3, **kw):
    cfg = RLConfig(prompts_per_step=2, group_size=4, budget=2,
                   sampler=LLaDAConfig(steps=4, gen_length=4, block_length=4, temperature=1.0),
                   **kw)
    batcher = RolloutBatcher(cfg, _prompts, _reward, seed=0)
    tcfg = TrainConfig(steps=steps, batch_size=1, log_every=1,
                       optim=OptimConfig(lr=lr, total_steps=steps, schedule="constant"))
    trainer = Trainer(tcfg, tiny_model("llada", seed=0), make_rl_loss(cfg, num_rollouts=8),
                      batcher, tmp_path, progress=False, mesh=None)
    batcher.attach(trainer)
    return trainer, trainer.run(), batcher


@pytest.mark.parametrize("kw", [dict(loss="tracerl", selector="uniform"),
                                dict(loss="tracerl", selector="atpo", rho=0.5),
                                dict(loss="agdo_rl", delta=5.0),
                                dict(loss="diffu_grpo", beta=0.04)],
                         ids=["uniform", "atpo", "agdo", "diffu_grpo"])
def test_rl_paths_run(tmp_path, kw):
    trainer, last, batcher = _run(tmp_path, **kw)
    assert np.isfinite(last["loss"]) and 0 <= last["reward"] <= 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    batch = batcher(1)
    n_rows = 8 if kw["loss"] == "diffu_grpo" else 8 * 2  # rollouts x budget states
    assert batch["inputs"].shape == (n_rows, 8)
    if kw["loss"] != "diffu_grpo":  # every state has targets, and only inside the completion
        assert (batch["targets"][:, :4] == 0).all() and (batch["targets"].sum(1) > 0).all()


def test_rl_raises_a_simple_reward(tmp_path):
    trainer, _, batcher = _run(tmp_path, steps=30, lr=3e-3, loss="tracerl", selector="uniform")
    rewards = [json.loads(x)["reward"] for x in (tmp_path / "metrics.jsonl").read_text()
               .splitlines()]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.2, rewards
