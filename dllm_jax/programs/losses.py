"""The train step's loss functions of the programs: any loss of the registry, built the same
way for SFT and RL (the registry's ``rows`` make the inputs, the model scores them, the
registry's ``loss`` reduces them), and AGDO's attention order that both use."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax import objectives as obj
from dllm_jax.programs.config import RLConfig, SFTConfig


@functools.partial(jax.jit, static_argnums=(0, 3))
def _agdo_order_jit(graphdef, params, seqs, n_per_step, resp, amask):
    model = nnx.merge(graphdef, nnx.State(params))
    _, aux = model.with_attention(seqs, amask, attn_mean=True)
    real = jnp.ones(seqs.shape, bool) if amask is None else amask.astype(bool)
    order = obj.attention_order(aux["attn_mean"], real & ~resp, resp, n_per_step)
    return order, aux["I"]


def agdo_order(graphdef, params, seqs, p_len: int, n_per_step: int,
               attention_mask: jax.Array | None = None):
    """AGDO's attention order of the generated positions ``[B, L - p_len]`` and the influence
    ``I_k`` ``[B, L]``, from one last-layer attention pass of the model on ``seqs``.
    ``attention_mask`` (1 on real tokens) keeps prompt padding out of the pass and out of the
    initial committed set ``U``; padded keys get influence 0."""
    r, length = seqs.shape
    resp = jnp.zeros((r, length), bool).at[:, p_len:].set(True)
    order, infl = _agdo_order_jit(graphdef, params, seqs, n_per_step, resp, attention_mask)
    return order[:, p_len:], infl


def make_rl_loss(cfg: RLConfig, num_rollouts: int):
    """``loss_fn(model, batch, key)`` for the train step: the registry loss of ``cfg.loss``.

    Args:
      cfg: the resolved RL config.
      num_rollouts: rollouts per RL step (``prompts_per_step * group_size``).

    With gradient accumulation the train step averages the micro-batches' losses, so each
    micro-batch's trajectory loss is taken over the rollouts it holds (its share of the step's
    rows): the accumulated gradient then equals the full batch's. The rows carry every random
    draw (d1's prompt masks are drawn with the rollouts), so the step's key is not used; the
    rows' attention mask keeps prompt padding out of the forward pass.
    """
    cfg.check_resolved()
    if num_rollouts != cfg.prompts_per_step * cfg.group_size:
        raise ValueError(f"num_rollouts {num_rollouts} is not prompts_per_step * group_size = "
                         f"{cfg.prompts_per_step * cfg.group_size}")
    spec = obj.get_loss(cfg.loss)
    loss_cfg = cfg.loss_config()
    rows_per_step = num_rollouts * cfg.rows_per_rollout

    def loss_fn(model, batch, key):
        logp = obj.token_logprobs(
            obj.aligned(model, batch["inputs"], batch["attention_mask"]), batch["tokens"])
        share = batch["inputs"].shape[0] / rows_per_step
        loss, aux = spec.loss(loss_cfg, logp, batch, num_rollouts=num_rollouts * share,
                              group_size=cfg.group_size)
        aux = {**aux, "reward": batch["reward"].mean()}
        if "zero_var" in batch:  # the RL program's rows carry it (not hand-made batches)
            aux["zero_var_groups"] = batch["zero_var"].mean()
        return loss, aux

    return loss_fn


def make_sft_loss(cfg: SFTConfig, prompt_length: int):
    """``loss_fn(model, batch, key)`` for the train step: the registry loss of ``cfg.loss`` on
    ``batch = {tokens, response_mask, attention_mask?}`` (prompt in the first
    ``prompt_length`` columns)."""
    spec = obj.get_loss(cfg.loss)
    loss_cfg = cfg.loss_config()

    def loss_fn(model, batch, key):
        graphdef, state = nnx.split(model)
        frozen = jax.lax.stop_gradient(nnx.to_pure_dict(state))
        sft = obj.SFTBatch(
            tokens_BL=batch["tokens"], response_mask_BL=batch["response_mask"], key=key,
            mask_id=model.config.mask_token_id, prompt_length=prompt_length,
            attention=lambda n: agdo_order(graphdef, frozen, batch["tokens"], prompt_length, n,
                                           batch.get("attention_mask")))
        rows = spec.rows(sft, loss_cfg)
        logp = obj.token_logprobs(obj.aligned(model, rows["inputs"], batch.get("attention_mask")),
                                  rows["tokens"])
        return spec.loss(loss_cfg, logp, rows)

    return loss_fn
