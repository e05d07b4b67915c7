"""The RL loop end to end on a tiny model: every loss/selector path runs through the Trainer,
and RL raises a simple reward."""

import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import tiny_model

from dllm_jax.sampling import LLaDAConfig
from dllm_jax.train import (
    OptimConfig,
    TrainConfig,
    Trainer,
    init_state,
    make_train_step,
    put_batch,
)
from dllm_jax.train.rl import RLConfig, RolloutBatcher, make_rl_loss

TARGET = 7


def _reward(step, completions):
    return (completions == TARGET).mean(1)


def _config(prompts=2, **kw):
    return RLConfig(prompts_per_step=prompts, group_size=4,
                    sampler=LLaDAConfig(steps=4, gen_length=4, block_length=4, temperature=1.0),
                    **kw)


def _run(tmp_path, steps=2, lr=1e-3, prompts=2, reward=_reward, **kw):
    cfg = _config(prompts, **kw)
    batcher = RolloutBatcher(
        cfg, lambda step: np.random.default_rng(step).integers(2, 60, (prompts, 4)), reward,
        seed=0)
    tcfg = TrainConfig(steps=steps, batch_size=1, log_every=1,
                       optim=OptimConfig(lr=lr, total_steps=steps, schedule="constant"))
    trainer = Trainer(tcfg, tiny_model("llada", seed=0),
                      make_rl_loss(cfg, num_rollouts=prompts * 4), batcher, tmp_path,
                      progress=False, mesh=None)
    batcher.attach(trainer)
    return trainer, trainer.run(), batcher


@pytest.mark.parametrize("kw", [dict(loss="tracerl", selector="uniform", budget=2),
                                dict(loss="tracerl", selector="atpo", rho=0.5, budget=2),
                                dict(loss="agdo_rl", delta=5.0, budget=2),
                                dict(loss="diffu_grpo", beta=0.04),
                                dict(loss="wd1")],
                         ids=["uniform", "atpo", "agdo", "diffu_grpo", "wd1"])
def test_rl_paths_run(tmp_path, kw):
    trainer, last, batcher = _run(tmp_path, **kw)
    assert np.isfinite(last["loss"]) and 0 <= last["reward"] <= 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    batch = batcher(1)
    one_step = kw["loss"] in ("diffu_grpo", "wd1")
    n_rows = 8 if one_step else 8 * 2  # rollouts x budget states
    assert batch["inputs"].shape == (n_rows, 8)
    if not one_step:  # every state has targets, and only inside the completion
        assert (batch["targets"][:, :4] == 0).all() and (batch["targets"].sum(1) > 0).all()


def test_rl_raises_a_simple_reward(tmp_path):
    trainer, _, batcher = _run(tmp_path, steps=30, lr=3e-3, loss="tracerl", selector="uniform",
                               budget=2)
    rewards = [json.loads(x)["reward"] for x in (tmp_path / "metrics.jsonl").read_text()
               .splitlines()]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.2, rewards


@pytest.mark.parametrize("kw", [dict(loss="tracerl", budget=2), dict(loss="agdo_rl", budget=2),
                                dict(loss="diffu_grpo"), dict(loss="wd1")],
                         ids=["tracerl", "agdo_rl", "diffu_grpo", "wd1"])
def test_rl_gradient_is_the_same_with_four_micro_batches(tmp_path, kw):
    """One RL step's rows (4 prompts x 4 rollouts) through the train step with SGD at lr 1 (so
    the update is minus the gradient): 4 micro-batches give the one-batch gradient. The
    trajectory losses sum over a rollout's states and average over rollouts, so each
    micro-batch must average over the rollouts it holds, not over all of them."""
    parity = lambda step, completions: (completions % 2).mean(1)  # noqa: E731  varied rewards
    _, _, batcher = _run(tmp_path, steps=1, prompts=4, reward=parity, **kw)
    batch = put_batch(batcher(0), None)
    model = tiny_model("llada", seed=0)
    opt = optax.sgd(1.0)
    grads = []
    for micro in (1, 4):
        step = make_train_step(nnx.graphdef(model), make_rl_loss(_config(4, **kw), 16), opt,
                               grad_accum=micro, donate=False)
        state = init_state(model, opt)
        new, _ = step(state, batch, jax.random.PRNGKey(0))
        grads.append([np.asarray(a) - np.asarray(b) for a, b in
                      zip(jax.tree.leaves(state["params"]), jax.tree.leaves(new["params"]),
                          strict=True)])
    assert max(np.abs(g).max() for g in grads[0]) > 1e-3  # the check can fail
    for whole, accumulated in zip(*grads, strict=True):
        np.testing.assert_allclose(accumulated, whole, atol=1e-5, rtol=1e-4)
