"""Training objectives: scoring (model -> per-token log-probs) kept apart from losses (pure
functions of arrays returning ``(loss, aux)``), ATPO selectors, AGDO, and the one loss registry
the training programs read (docs/objectives.md)."""

from dllm_jax.objectives.agdo import (
    agdo_advantages,
    agdo_rl_loss,
    agdo_sft_loss,
    attention_order,
    influence,
)
from dllm_jax.objectives.losses import (
    clipped_objective,
    completion_mask_until_eos,
    diffu_grpo_loss,
    forward_mask,
    group_advantages,
    k3_kl,
    masked_diffusion_loss,
    sft_loss,
    token_logprobs,
    tracerl_loss,
    wd1_loss,
)
from dllm_jax.objectives.registry import (
    LOSSES,
    LossSpec,
    Rollouts,
    SFTBatch,
    config_for,
    get_loss,
    loss_names,
    resolved_knobs,
)
from dllm_jax.objectives.scoring import (
    aligned,
    d1_inputs,
    mc_log_likelihood,
    mc_masks,
    order_states,
    score_masked,
    state_batch,
    states_from_steps,
    stratified_mask_counts,
    tracerl_ranges,
    tracerl_states,
)
from dllm_jax.objectives.selectors import SELECTORS, get_selector

__all__ = [
    "LOSSES", "SELECTORS", "LossSpec", "Rollouts", "SFTBatch", "agdo_advantages",
    "agdo_rl_loss", "agdo_sft_loss", "aligned", "attention_order", "clipped_objective",
    "completion_mask_until_eos", "config_for", "d1_inputs", "diffu_grpo_loss", "forward_mask",
    "get_loss", "get_selector", "group_advantages", "influence", "k3_kl", "loss_names",
    "masked_diffusion_loss", "mc_log_likelihood", "mc_masks", "order_states",
    "resolved_knobs", "score_masked", "sft_loss", "state_batch", "states_from_steps",
    "stratified_mask_counts", "token_logprobs", "tracerl_loss", "tracerl_ranges",
    "tracerl_states", "wd1_loss",
]
