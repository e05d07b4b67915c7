"""The RL loop end to end on a tiny model: every loss/selector path runs through the Trainer,
RL raises a simple reward, and the batches the loop builds are checked against independent
computations: d1's fresh prompt mask per inner iteration, the tokens the sampler committed,
and each loss's value worked by hand in NumPy from the batch and the model's log-probs."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import TINY_MASK_ID, sharpened, tiny_model

from dllm_jax.errors import ConfigError
from dllm_jax.programs.config import RLConfig
from dllm_jax.programs.losses import make_rl_loss
from dllm_jax.programs.rollouts import RolloutBatcher
from dllm_jax.sampling import LLaDAConfig, generate
from dllm_jax.train import (
    CheckpointConfig,
    OptimConfig,
    TrainConfig,
    Trainer,
    init_state,
    make_train_step,
    put_batch,
)
from dllm_jax.train.step import batch_sharding

TARGET = 7


def _reward(step, rollouts, completions):
    return (completions == TARGET).mean(1)


def _config(prompts=2, group=4, temperature=1.0, **kw):
    """A resolved RL config (what a run passes to the rollouts and the loss)."""
    return RLConfig(prompts_per_step=prompts, group_size=group,
                    sampler=LLaDAConfig(steps=4, gen_length=4, block_length=4,
                                        temperature=temperature), **kw).resolved()


def _prompts(step, prompts=2):
    return np.random.default_rng(step).integers(2, 60, (prompts, 4))


def _attached(tmp_path, steps=2, lr=1e-3, prompts=2, group=4, reward=_reward, model=None,
              temperature=1.0, **kw):
    """A Trainer on a tiny model and the RolloutBatcher feeding it (not run yet)."""
    cfg = _config(prompts, group, temperature, **kw)
    batcher = RolloutBatcher(cfg, lambda step: _prompts(step, prompts), reward, seed=0)
    tcfg = TrainConfig(steps=steps, batch_size=1, log_every=1,
                       optim=OptimConfig(lr=lr, total_steps=steps, schedule="constant"))
    trainer = Trainer(tcfg, tiny_model("llada", seed=0) if model is None else model,
                      make_rl_loss(cfg, num_rollouts=prompts * group), batcher, tmp_path,
                      progress=False, mesh=None)
    return trainer, batcher.attach(trainer)


def _run(tmp_path, **kw):
    trainer, batcher = _attached(tmp_path, **kw)
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
    _, _, batcher = _run(tmp_path, steps=1, prompts=4, reward=_parity, **kw)
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


class _CompileLog(logging.Handler):
    """Counts the programs JAX compiles (``jax_log_compiles``) per training step."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.step = -1
        self.by_step: dict[int, list[str]] = {}

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.by_step.setdefault(self.step, []).append(message.split(" with ")[0])


def test_rl_steps_after_the_first_compile_nothing(tmp_path):
    """Five RL steps on a (data 2, fsdp 2, tensor 2) mesh, with a reference model: after the
    first, rollouts, rewards, rows, log-probs and the update compile no new program (steps 1
    to 3 are counted; the last step ends with the run's checkpoint, whose slicing of each
    array's shards to the host compiles its own small programs). The
    reference parameters are sharded like the policy's, and the rows arrive split over the
    batch axes."""
    cfg = _config(loss="tracerl", budget=2)
    batcher = RolloutBatcher(cfg, _prompts, _reward, seed=0)
    log = _CompileLog()

    def batch_fn(step):
        log.step = step
        return batcher(step)

    tcfg = TrainConfig(steps=5, batch_size=1, log_every=1, mesh=(2, 2, 2),
                       optim=OptimConfig(lr=1e-3, total_steps=5, schedule="constant"),
                       checkpoint=CheckpointConfig(every=100))
    trainer = Trainer(tcfg, tiny_model("llada", seed=0), make_rl_loss(cfg, num_rollouts=8),
                      batch_fn, tmp_path, progress=False)
    batcher.attach(trainer)
    assert cfg.keeps_reference
    logger = logging.getLogger("jax")
    logger.addHandler(log)
    jax.config.update("jax_log_compiles", True)
    try:
        trainer.run()
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(log)
    assert log.by_step.get(0), "the first step compiles (the count can fail)"
    assert {s: log.by_step.get(s) for s in (1, 2, 3)} == {1: None, 2: None, 3: None}
    for ref, policy in zip(jax.tree.leaves(batcher.ref_params),
                           jax.tree.leaves(trainer.state["params"]), strict=True):
        assert ref.sharding == policy.sharding
    assert any(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(batcher.ref_params))
    rows = batcher(3)["inputs"]
    assert rows.sharding.is_equivalent_to(batch_sharding(trainer.mesh), rows.ndim)


def test_rl_with_lora_keeps_only_the_adapters_as_reference(tmp_path):
    """With LoRA the reference is a copy of the adapters at the start (B = 0: the base model);
    the base is the policy's own. After one update the next RL step's reference log-probs are
    still the base model's, while the rollout policy's have moved."""
    from dllm_jax.train.lora import LoRAConfig

    cfg = _config(loss="tracerl", budget=2)
    batcher = RolloutBatcher(cfg, _prompts, _parity, seed=0)
    tcfg = TrainConfig(steps=2, batch_size=1, log_every=1, lora=LoRAConfig(rank=4),
                       optim=OptimConfig(lr=1e-2, total_steps=2, schedule="constant"))
    trainer = Trainer(tcfg, tiny_model("llada", seed=0), make_rl_loss(cfg, num_rollouts=8),
                      batcher, tmp_path, progress=False, mesh=None)
    batcher.attach(trainer)
    lora = trainer.state["params"]["lora"]
    assert jax.tree.structure(batcher.ref_params) == jax.tree.structure(lora)
    trainer.run()
    batch = batcher(1)  # built after the first update
    base = _hand_logp(tiny_model("llada", seed=0), batch["inputs"], batch["tokens"],
                      batch["attention_mask"])
    np.testing.assert_allclose(batch["ref_logp"], base, atol=1e-5)
    assert np.abs(np.asarray(batch["old_logp"]) - base).max() > 1e-4


P = 4  # prompt columns of _prompts
EOS = 1  # the tiny models' EOS id


def _parity(step, rollouts, completions):
    return (completions % 2).mean(1)  # varied rewards, so advantages are not all 0


def _hand_logp(model, inputs, tokens, attention_mask=None):
    """``log_softmax(logits)[token]`` in float64 NumPy from the model's logits."""
    mask = None if attention_mask is None else jnp.asarray(attention_mask)
    logits = np.asarray(model(jnp.asarray(inputs), mask), np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]


def test_diffu_grpo_draws_a_fresh_prompt_mask_per_inner_iteration(tmp_path):
    """d1 draws one prompt mask per inner iteration when it rolls out, and takes the old (and
    reference) log-probs under each mask then, before any update; inner iteration i trains on
    mask i. Two inner iterations of one RL step, trained: the masks differ, the completion is
    fully masked in both, and each iteration's old/ref log-probs are the rollout policy's
    under its own mask (not under the other mask, nor the updated policy's)."""
    trainer, _, batcher = _run(tmp_path, steps=2, lr=1e-2, reward=_parity, loss="diffu_grpo",
                               inner_iterations=2)
    rollout_policy = tiny_model("llada", seed=0)
    b0, b1 = batcher(0), batcher(1)
    np.testing.assert_array_equal(b0["tokens"], b1["tokens"])  # one set of rollouts
    m0, m1 = (b["inputs"] == TINY_MASK_ID for b in (b0, b1))
    assert m0[:, P:].all() and m1[:, P:].all()
    assert (m0[:, :P] != m1[:, :P]).any()
    for b in (b0, b1):
        want = _hand_logp(rollout_policy, b["inputs"], b["tokens"])
        np.testing.assert_allclose(b["old_logp"], want, atol=1e-5)
        np.testing.assert_allclose(b["ref_logp"], want, atol=1e-5)
    comp = b1["targets"] > 0
    under_mask0 = _hand_logp(rollout_policy, b0["inputs"], b1["tokens"])
    assert np.abs(b1["old_logp"] - under_mask0)[comp].max() > 1e-3
    updated = _hand_logp(trainer.model, b1["inputs"], b1["tokens"])
    assert np.abs(b1["old_logp"] - updated)[comp].max() > 1e-3


def test_diffu_grpo_with_one_inner_iteration_is_unchanged(tmp_path):
    """mu = 1: the one prompt mask is still drawn with ``fold_in(fold_in(PRNGKey(seed),
    rl_step), 1)`` (uniform < p_mask_prompt on the prompt), its old log-probs are the current
    policy's (ratio 1), and it is the first inner iteration's batch when mu = 2."""
    _, one = _attached(tmp_path / "one", loss="diffu_grpo", inner_iterations=1)
    _, two = _attached(tmp_path / "two", loss="diffu_grpo", inner_iterations=2)
    a, b = one(0), two(0)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 0), 1)
    draw = np.asarray(jax.random.uniform(key, a["inputs"].shape)) < 0.15
    np.testing.assert_array_equal(a["inputs"][:, :P] == TINY_MASK_ID, draw[:, :P])
    np.testing.assert_allclose(a["old_logp"], _hand_logp(tiny_model("llada", seed=0),
                                                         a["inputs"], a["tokens"]), atol=1e-5)


def test_agdo_rl_rolls_out_with_the_attention_guided_rule():
    cfg = _config(loss="agdo_rl").resolved()
    assert (cfg.sampler.remasking, cfg.sampler.cache) == ("max_s", "none")
    assert cfg.resolved() == cfg
    assert _config(loss="tracerl").resolved().sampler.remasking == "low_confidence"
    raw = RLConfig(loss="tracerl", sampler=LLaDAConfig(steps=4, gen_length=4, block_length=4))
    with pytest.raises(ConfigError, match="pass the resolved RL config"):
        make_rl_loss(raw, raw.prompts_per_step * raw.group_size)
    with pytest.raises(ConfigError, match="needs the resolved config"):
        raw.rows_per_rollout  # noqa: B018
    with pytest.raises(ConfigError, match=r"rl.n_per_step \(1\) must be the rollout sampler's "
                                          "tokens per step"):
        RLConfig(loss="agdo_rl", sampler=LLaDAConfig(steps=4, gen_length=8,
                                                     block_length=8)).resolved()


def test_agdo_rl_states_follow_the_order_the_rollouts_were_decoded_in(tmp_path):
    """AGDO-RL decodes its rollouts with the attention-guided ``max_s`` rule and trains on that
    order: rolling the same prompts out again with ``max_s`` and the same key gives the
    batch's sequences, and state k of each rollout (budget T = 4: one step per state) targets
    exactly the positions its ``step_map`` commits at step k and masks those of steps >= k."""
    _, batcher = _attached(tmp_path, loss="agdo_rl", budget=4)
    batch = batcher(0)
    prompts = np.repeat(_prompts(0), 4, axis=0)
    key = jax.random.fold_in(jax.random.PRNGKey(0), 0)

    def rollout(rule):
        cfg = LLaDAConfig(steps=4, gen_length=4, block_length=4, temperature=1.0,
                          remasking=rule)
        return generate(tiny_model("llada", seed=0), prompts, config=cfg, key=key, record=True)

    out = rollout("max_s")
    step_map = np.asarray(out.trajectory.step_map)
    np.testing.assert_array_equal(batch["tokens"][::4], np.asarray(out.sequences))
    for r in range(len(prompts)):
        for k in range(4):
            row = 4 * r + k
            np.testing.assert_array_equal(batch["targets"][row, P:] > 0, step_map[r] == k)
            np.testing.assert_array_equal(batch["inputs"][row, P:] == TINY_MASK_ID,
                                          step_map[r] >= k)
    # The check can fail: low-confidence decoding commits in another order.
    assert (np.asarray(rollout("low_confidence").trajectory.step_map) != step_map).any()


def _eos_swapped(token=6):
    """A sharpened tiny model whose ids EOS and ``token`` trade places (embedding rows and
    LM-head columns): greedy decoding then commits EOS mid-completion with other tokens after
    it (where the model committed ``token``)."""
    model = sharpened(tiny_model("llada", seed=2))
    emb = np.array(model.embed_tokens[...])
    emb[[EOS, token]] = emb[[token, EOS]]
    model.embed_tokens[...] = jnp.asarray(emb)
    head = np.array(model.lm_head[...])
    head[:, [EOS, token]] = head[:, [token, EOS]]
    model.lm_head[...] = jnp.asarray(head)
    return model


def test_rl_targets_are_the_tokens_the_sampler_committed_after_an_eos(tmp_path):
    """The RL loop trains on the tokens the sampler committed, those after an EOS included
    (the sampler returns them as committed). Greedy rollouts of a model that commits EOS
    mid-completion; TraceRL with one state per step: state k's input is the canvas before
    step k, so each target token must be the model's greedy token (MASK excluded) there."""
    _, batcher = _attached(tmp_path, prompts=4, group=2, temperature=0.0, model=_eos_swapped(),
                           loss="tracerl", budget=4)
    batch = batcher(0)
    logits = np.asarray(_eos_swapped()(jnp.asarray(batch["inputs"])), np.float64)
    logits[..., TINY_MASK_ID] = -np.inf
    greedy = logits.argmax(-1)
    targets = batch["targets"] > 0
    np.testing.assert_array_equal(batch["tokens"][targets], greedy[targets])
    # The check covers tokens committed after an EOS (other than EOS) as targets.
    comp = batch["tokens"][::4, P:]
    is_eos = comp == EOS
    after_eos = np.cumsum(is_eos, axis=1) - is_eos > 0
    assert (after_eos & ~is_eos).any(), comp
    assert (targets[:, P:] & np.repeat(after_eos & ~is_eos, 4, axis=0)).any()


def _perturbed(model, scale=0.05, seed=1):
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype)
              for x, k in zip(leaves, keys, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def _hand_advantages(rewards, group, mode):
    r = np.asarray(rewards, np.float64).reshape(-1, group)
    a = r - r.mean(1, keepdims=True)
    if mode == "zscore":  # population std; 0 for a uniform group
        sd = r.std(1, keepdims=True)
        a = np.where(sd > 0, a / np.where(sd > 0, sd, 1.0), 0.0)
    return a.reshape(-1)


def _hand_influence(model, seqs, attention_mask):
    """``I_k``: the head-averaged last-layer attention key k receives, averaged over the
    real queries."""
    attn = np.asarray(model.with_attention(jnp.asarray(seqs), jnp.asarray(attention_mask),
                                           attn_mean=True)[1]["attn_mean"], np.float64)
    q = np.asarray(attention_mask, np.float64)
    return np.einsum("bik,bi->bk", attn, q) / q.sum(1, keepdims=True)


def _until_first_eos(tokens):
    m = np.zeros(tokens.shape)
    for r, row in enumerate(tokens):
        stop = P + (list(row[P:]).index(EOS) + 1 if EOS in row[P:] else len(row) - P)
        m[r, P:stop] = 1  # completion tokens up to and including the first EOS
    return m


def _hand_loss(name, cfg, batch, logp, states):
    """The paper's loss from the batch's arrays and the current log-probs, in NumPy."""
    adv = np.repeat(_hand_advantages(batch["reward"][::states], cfg.group_size, cfg.advantage),
                    states)[:, None]
    if name == "agdo_rl":  # A + sign(A) delta I_k, I_k of the rollout policy
        infl = _hand_influence(tiny_model("llada", seed=0), batch["tokens"][::states],
                               batch["attention_mask"][::states])
        adv = adv + np.sign(adv) * cfg.delta * np.repeat(infl, states, axis=0)
    rho = np.exp(logp - batch["old_logp"])
    clipped = np.clip(rho, 1 - cfg.eps, 1 + cfg.eps)
    d = batch["ref_logp"] - logp
    per_tok = -np.minimum(rho * adv, clipped * adv) + cfg.beta * (np.exp(d) - d - 1)
    if name == "diffu_grpo":  # per rollout the mean over its completion tokens; mean over rollouts
        m = _until_first_eos(batch["tokens"])
        loss = ((per_tok * m).sum(1) / m.sum(1)).mean()
    else:  # per state the mean over its targets; summed over states, over the rollouts
        m = batch["targets"]
        loss = sum((per_tok[s] * m[s]).sum() / m[s].sum() for s in range(len(m))
                   if m[s].sum() > 0) / (len(m) // states)
    return loss, ((rho != clipped) & (m > 0)).sum()


HAND = {"tracerl": dict(loss="tracerl", budget=2),
        "agdo_rl": dict(loss="agdo_rl", budget=2, beta=0.01),
        "diffu_grpo": dict(loss="diffu_grpo")}


@pytest.mark.parametrize("name", sorted(HAND))
def test_rl_loss_on_a_built_batch_equals_the_hand_computation(tmp_path, name):
    """2 prompts x 2 rollouts through the real RolloutBatcher: the batch's old and reference
    log-probs are the rollout policy's (ratio 1 at the first inner iteration), and
    ``make_rl_loss`` equals the loss worked by hand (advantages, clipped ratio, k3 KL to the
    reference, each paper's normalisation) under the rollout policy and under moved
    parameters whose ratios are clipped."""
    _, batcher = _attached(tmp_path, prompts=2, group=2, reward=_parity, **HAND[name])
    cfg, batch = batcher.cfg, batcher(0)
    states = cfg.rows_per_rollout
    assert len(batch["inputs"]) == 4 * states
    rollout_policy = tiny_model("llada", seed=0)
    first = _hand_logp(rollout_policy, batch["inputs"], batch["tokens"], batch["attention_mask"])
    np.testing.assert_allclose(batch["old_logp"], first, atol=1e-5)
    np.testing.assert_allclose(batch["ref_logp"], first, atol=1e-5)
    assert np.abs(_hand_advantages(batch["reward"][::states], 2, cfg.advantage)).max() > 0
    loss_fn = make_rl_loss(cfg, num_rollouts=4)
    arrays = {k: jnp.asarray(v) for k, v in batch.items()}
    for model, clips in ((rollout_policy, False), (_perturbed(tiny_model("llada", seed=0)), True)):
        logp = _hand_logp(model, batch["inputs"], batch["tokens"], batch["attention_mask"])
        want, n_clipped = _hand_loss(name, cfg, batch, logp, states)
        assert (n_clipped > 0) == clips
        got = float(loss_fn(model, arrays, jax.random.PRNGKey(0))[0])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
