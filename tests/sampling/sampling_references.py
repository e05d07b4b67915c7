"""Loops written from the original implementations, for tests/sampling/test_sampling_reference.py.

Each reference follows its original's code (torch on CPU, as the original runs it) and
calls only the model's aligned logits (``denoise_step``, or the model's own ``prefill`` /
``decode_block`` / ``with_attention``; the network is tested elsewhere):

- ``llada_generate``: ML-GSAI/LLaDA ``generate.py`` (``get_num_transfer_tokens``,
  ``add_gumbel_noise`` in float64, low_confidence / random remasking, CFG, ``logits_eos_inf``,
  ``confidence_eos_eot_inf``). The project's other position rules (tpp, topk_margin, entropy,
  max_s), top-p / top-k and ``alg_temp`` are extensions (docs/sampling.md); they plug in where
  the original computes ``x0_p`` and picks its top-k.
- ``fast_dllm_generate``: NVlabs/Fast-dLLM ``llada/generate.py`` (``generate``,
  ``generate_with_prefix_cache``, ``generate_with_dual_cache``, ``get_transfer_index``).
- ``dream_sample``: Dream ``generation_utils.py`` (``diffusion_generate``'s ``_sample`` and
  ``sample_tokens``), configured by ``dream_generation_config``: what ``diffusion_generate``
  runs with under transformers 4.46.2.

Outputs are compared raw, as the originals return them (no cutting at EOS).

Randomness: torch's generator cannot be replayed in JAX, so every random number the originals
draw with ``torch.rand`` / ``Categorical`` / ``multinomial`` is replaced by the draw the sampler
makes, rebuilt here from the contract in docs/sampling.md, "Randomness" (``Draws``), and used
the way the original uses its own: LLaDA's ``add_gumbel_noise`` gets ``u = exp(-exp(-g))``
(so ``exp(l) / (-log u) ** T`` picks ``argmax(l + T g)``); Dream's categorical sample and its
multinomial position sample without replacement become Gumbel-max / Gumbel-top-k on the same
probabilities (equal in law; ``test_position_sampling_matches_multinomial`` checks the second).

Shared deviation (documented): MASK is never proposed. Ties: ``torch.topk`` leaves the order of
equal values unspecified (its CPU kernel does not prefer the lowest index); the only ties here
are the confidence-0 positions of ``confidence_eos_eot_inf``, and both sides break them by
position (``top_positions``).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from dllm_jax.model.transformer import denoise_step

MASK, EOS, EOT = 63, 1, 2  # the tiny models' ids (tests/helpers.py); EOT is any plain token
NEG_INF = -torch.inf


def logits_of(model, x):
    return torch.from_numpy(np.array(denoise_step(model, x.numpy())))


class Draws:
    """The sampler's random numbers (docs/sampling.md, "Randomness"): row ``b`` draws from
    ``fold_in(key, b)``, step ``t`` from ``fold_in(row, t)``; the token key is
    ``fold_in(step, 0)``, the position key ``fold_in(step, 1)``. Arrays cover the ``N`` block
    positions."""

    def __init__(self, seed, vocab=64):
        self.key, self.vocab = jax.random.PRNGKey(seed), vocab

    def _keys(self, b, t):
        k = jax.random.fold_in(jax.random.fold_in(self.key, b), t)
        return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)

    def token_gumbel(self, b, t, n):
        return torch.from_numpy(np.array(
            jax.random.gumbel(self._keys(b, t)[0], (n, self.vocab), jnp.float32)))

    def position_uniform(self, b, t, n):
        return torch.from_numpy(np.array(jax.random.uniform(self._keys(b, t)[1], (n,))))

    def coin_uniform(self, b, t, n):
        k = jax.random.fold_in(self._keys(b, t)[1], 2)
        return torch.from_numpy(np.array(jax.random.uniform(k, (n,))))

    def position_gumbel(self, b, t, n):
        k = jax.random.fold_in(self._keys(b, t)[1], 3)
        return torch.from_numpy(np.array(jax.random.gumbel(k, (n,))))

    def rand_like(self, logits, t, lo, n):
        """LLaDA's ``torch.rand_like(logits, float64)``: ``exp(-exp(-g))`` on the block, 0.5
        elsewhere (never committed)."""
        u = torch.full(logits.shape, 0.5, dtype=torch.float64)
        for b in range(logits.shape[0]):
            u[b, lo:lo + n] = torch.exp(-torch.exp(-self.token_gumbel(b, t, n).double()))
        return u

    def rand_positions(self, shape, t, lo, n):
        """``torch.rand((B, L))`` of random remasking: the position draws on the block."""
        r = torch.full(shape, 0.5)
        for b in range(shape[0]):
            r[b, lo:lo + n] = self.position_uniform(b, t, n)
        return r


def top_positions(conf_row, k):
    """``torch.topk(conf_row, k).indices`` with equal values taken lowest position first."""
    return torch.argsort(-conf_row, stable=True)[:int(k)]


def argmax_but_mask(scores):
    """``torch.argmax(scores, -1)`` over every token but MASK (the shared deviation)."""
    return torch.argmax(scores.masked_fill(torch.arange(scores.shape[-1]) == MASK, NEG_INF), -1)


# --- ML-GSAI/LLaDA generate.py ------------------------------------------------------------------


def add_gumbel_noise(logits, temperature, noise):
    """generate.py's ``add_gumbel_noise``, with ``noise`` for ``torch.rand_like``."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    gumbel_noise = (- torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, :remainder[i]] += 1
    return num_transfer_tokens


def filter_logits(logits, top_p, top_k):
    """Extension: Dream's ``top_p_logits`` / ``top_k_logits`` on the raw logits (the same
    tensor when neither is set, as in the original)."""
    if top_p is not None and top_p < 1:
        logits = top_p_logits(logits, top_p)
    if top_k:
        logits = top_k_logits(logits, top_k)
    return logits


def extension_confidence(model, x, logits, x0, remasking):
    """Extensions' ``x0_p`` (docs/sampling.md, "Presets"), from the untempered softmax."""
    p = F.softmax(logits, dim=-1)
    if remasking == "tpp":
        return p.masked_fill(torch.arange(p.shape[-1]) == MASK, 0.0).max(-1).values
    if remasking == "topk_margin":
        top2 = torch.sort(p, dim=-1, descending=True).values
        return top2[..., 0] - top2[..., 1]
    if remasking == "entropy":
        return torch.sum(p * torch.log(p + 1e-10), dim=-1)
    assert remasking == "max_s"
    _, aux = model.with_attention(jnp.asarray(x.numpy()), None,
                                  keys_BL=jnp.asarray((x != MASK).numpy()))
    return torch.from_numpy(np.array(aux["S"]))


def llada_generate(model, prompt, draws, *, steps, gen_length, block_length, temperature=0.0,
                   cfg_scale=0.0, remasking="low_confidence", logits_eos_inf=False,
                   confidence_eos_eot_inf=False, top_p=None, top_k=None, alg_temp=0.0):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), MASK, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt.clone()
    prompt_index = (x != MASK)
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        lo = prompt.shape[1] + num_block * block_length
        block_mask_index = (x[:, lo:lo + block_length] == MASK)
        num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            t = num_block * steps + i
            mask_index = (x == MASK)
            if cfg_scale > 0.:
                un_x = x.clone()
                un_x[prompt_index] = MASK
                x_ = torch.cat([x, un_x], dim=0)
                logits = logits_of(model, x_)
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = logits_of(model, x)
            if logits_eos_inf:
                logits[:, :, EOS] = -torch.inf
            noise = draws.rand_like(logits, t, lo, block_length) if temperature > 0 else None
            logits_with_noise = add_gumbel_noise(filter_logits(logits, top_p, top_k),
                                                 temperature, noise)
            x0 = argmax_but_mask(logits_with_noise)
            if confidence_eos_eot_inf:
                logits_with_noise[:, :, EOS] = logits[:, :, EOT] = -torch.inf
            if remasking == 'low_confidence':
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            elif remasking == 'random':
                x0_p = draws.rand_positions((x0.shape[0], x0.shape[1]), t, lo, block_length)
            else:
                x0_p = extension_confidence(model, x, logits, x0, remasking)
            x0_p[:, lo + block_length:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                conf = confidence[j]
                if alg_temp > 0:  # extension: Gumbel-top-k = sampling without replacement
                    g = torch.zeros_like(conf)
                    g[lo:lo + block_length] = draws.position_gumbel(j, t, block_length)
                    conf = torch.log_softmax(conf / alg_temp, -1) + g
                transfer_index[j, top_positions(conf, num_transfer_tokens[j, i])] = True
            x[transfer_index] = x0[transfer_index]
    return x


# --- NVlabs/Fast-dLLM llada/generate.py ---------------------------------------------------------


def get_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_tokens,
                       threshold, noise):
    logits_with_noise = add_gumbel_noise(logits, temperature=temperature, noise=noise.u)
    x0 = argmax_but_mask(logits_with_noise)
    if remasking == 'low_confidence':
        p = F.softmax(logits.to(torch.float64), dim=-1)
        x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
    else:
        assert remasking == 'random'
        x0_p = noise.r
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -np.inf)
    transfer_index = torch.zeros_like(x0, dtype=torch.bool)
    if threshold is not None:
        num_transfer_tokens = mask_index.sum(dim=1, keepdim=True)
    for j in range(confidence.shape[0]):
        select_index = top_positions(confidence[j], num_transfer_tokens[j])
        transfer_index[j, select_index] = True
        if threshold is not None:
            for k in range(1, num_transfer_tokens[j]):
                if confidence[j, select_index[k]] < threshold:
                    transfer_index[j, select_index[k]] = False
    return x0, transfer_index


@dataclasses.dataclass
class StepNoise:
    u: torch.Tensor | None  # torch.rand_like(logits, float64), drawn at temperature > 0
    r: torch.Tensor  # torch.rand((B, L')) of random remasking


def fast_dllm_generate(model, prompt, draws, *, steps, gen_length, block_length,
                       temperature=0., remasking='low_confidence', threshold=None, cache="none"):
    """``generate`` (cache ``none``), ``generate_with_prefix_cache`` or
    ``generate_with_dual_cache``; their loops differ only in what the model is run on."""
    p_len = prompt.shape[1]
    x = torch.full((prompt.shape[0], p_len + gen_length), MASK, dtype=torch.long)
    x[:, :p_len] = prompt.clone()
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    slots = block_length if threshold is not None else steps  # the sampler's step numbering
    for num_block in range(num_blocks):
        current_block_start = p_len + num_block * block_length
        current_block_end = current_block_start + block_length
        block_mask_index = (x[:, current_block_start:current_block_end] == MASK)
        num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)

        def noise(logits, i, offset):
            t, lo = num_block * slots + i, current_block_start - offset
            return StepNoise(
                draws.rand_like(logits, t, lo, block_length) if temperature > 0 else None,
                draws.rand_positions(logits.shape[:2], t, lo, block_length))

        i = 0
        while True:
            if cache == "none" or i == 0:
                mask_index = (x == MASK)
                if cache == "none":
                    logits = logits_of(model, x)
                else:  # the block start: a full forward that fills the cache
                    out, kv = model.prefill(jnp.asarray(x.numpy()))
                    logits = torch.from_numpy(np.array(out))
                mask_index[:, current_block_end:] = 0
                x0, transfer_index = get_transfer_index(
                    logits, temperature, remasking, mask_index, x,
                    num_transfer_tokens[:, i] if threshold is None else None, threshold,
                    noise(logits, i, 0))
                x[transfer_index] = x0[transfer_index]
            else:
                # prefix: the block and everything after it are the queries, over the cached
                # prefix; dual: the block only, over the cached prefix and suffix.
                end = x.shape[1] if cache == "prefix" else current_block_end
                view = x[:, current_block_start:end]
                mask_index = (view == MASK)
                mask_index[:, block_length:] = 0
                logits = torch.from_numpy(np.array(model.decode_block(
                    jnp.asarray(x.numpy()), None, kv, current_block_start,
                    end - current_block_start, cache)))
                x0, transfer_index = get_transfer_index(
                    logits, temperature, remasking, mask_index, view,
                    num_transfer_tokens[:, i] if threshold is None else None, threshold,
                    noise(logits, i, current_block_start))
                view[transfer_index] = x0[transfer_index]
            i += 1
            if (x[:, current_block_start:current_block_end] == MASK).sum() == 0:
                break
    return x


# --- Dream generation_utils.py under transformers 4.46.2 ---------------------------------------

# transformers 4.46.2 ``PretrainedConfig._get_global_generation_defaults()``: every model config
# carries these unless its config.json sets them (the entries Dream reads).
PRETRAINED_CONFIG_GENERATION_DEFAULTS = {"max_length": 20, "temperature": 1.0, "top_k": 50,
                                         "top_p": 1.0}
# ``DreamGenerationConfig.__init__``'s ``kwargs.pop(name, default)`` defaults.
DREAM_GENERATION_CONFIG_DEFAULTS = {
    "temperature": 0.0, "top_p": None, "top_k": None, "max_length": 20, "max_new_tokens": None,
    "eps": 1e-3, "steps": 512, "alg": "origin", "alg_temp": None}


def dream_generation_config(config_json=None, **kwargs):
    """What ``model.diffusion_generate(ids, **kwargs)`` runs with: ``_prepare_generation_config``
    builds ``DreamGenerationConfig.from_model_config(model.config)`` (the model config's
    ``to_dict()``, None values dropped, passed to ``DreamGenerationConfig(**config_dict)``),
    then ``generation_config.update(**kwargs)``."""
    model_config = {**PRETRAINED_CONFIG_GENERATION_DEFAULTS, **(config_json or {})}
    config_dict = {k: v for k, v in model_config.items() if v is not None}
    generation_config = {k: config_dict.get(k, default)
                         for k, default in DREAM_GENERATION_CONFIG_DEFAULTS.items()}
    generation_config.update(kwargs)
    return generation_config


def top_p_logits(logits, top_p=None):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    sorted_indices_to_remove = cumulative_probs > top_p
    sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
    sorted_indices_to_remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask = mask.scatter_(-1, sorted_indices, sorted_indices_to_remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_logits(logits, top_k=None):
    top_k = min(top_k, logits.size(-1))
    indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(indices_to_remove, torch.finfo(logits.dtype).min)


def sample_tokens(logits, gumbel, temperature=0.0, top_p=None, top_k=None,
                  margin_confidence=False, neg_entropy=False):
    """``gumbel`` replaces ``dists.Categorical(probs).sample()`` by Gumbel-max."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_logits(logits, top_p)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        x0 = argmax_but_mask(torch.log(probs) + gumbel)
        confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    else:  # ``probs.max(dim=-1)``, MASK excluded
        x0 = argmax_but_mask(probs)
        confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        epsilon = 1e-10
        log_probs = torch.log(probs + epsilon)
        confidence = torch.sum(probs * log_probs, dim=-1)
    return confidence, x0


def dream_sample(model, input_ids, draws, generation_config):
    """``_sample`` (the batch has no padding: attention ``"full"``)."""
    g = generation_config
    max_length = g["max_new_tokens"] + input_ids.shape[1]
    steps, eps, alg, alg_temp = g["steps"], g["eps"], g["alg"], g["alg_temp"]
    temperature, top_p, top_k = g["temperature"], g["top_p"], g["top_k"]
    lo, n = input_ids.shape[1], g["max_new_tokens"]
    x = F.pad(input_ids, (0, max_length - input_ids.shape[1]), value=MASK)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = (x == MASK)
        if not mask_index.any():
            continue  # the original's step changes nothing when nothing is masked
        logits = logits_of(model, x)  # aligned: Dream's shift is the model's
        mask_logits = logits[mask_index]
        rows, cols = mask_index.nonzero(as_tuple=True)  # ``logits[mask_index]``'s order

        def per_position(draw):
            by_row = {b: draw(b, i, n) for b in range(x.shape[0])}
            return torch.stack([by_row[int(b)][int(c) - lo]
                                for b, c in zip(rows, cols, strict=True)])

        gumbel = per_position(draws.token_gumbel) if temperature > 0 else None
        t = timesteps[i]
        s = timesteps[i + 1]
        if alg == 'origin':
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index], dtype=torch.long) + MASK
            transfer_index_t_s = per_position(draws.coin_uniform) < p_transfer
            _, x0[transfer_index_t_s] = sample_tokens(
                mask_logits[transfer_index_t_s],
                None if gumbel is None else gumbel[transfer_index_t_s],
                temperature=temperature, top_p=top_p, top_k=top_k)
            x[mask_index] = x0.clone()
        else:
            confidence, x0 = sample_tokens(
                mask_logits, gumbel, temperature, top_p=top_p, top_k=top_k,
                margin_confidence=alg == 'topk_margin', neg_entropy=alg == 'entropy')
            num_mask_token = mask_index.sum() / mask_index.shape[0]
            number_transfer_tokens = (int(num_mask_token * (1 - s / t)) if i < steps - 1
                                      else int(num_mask_token))
            full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
            full_confidence[mask_index] = confidence
            if number_transfer_tokens > 0:
                picks = []
                for b in range(x.shape[0]):
                    if alg_temp is None or alg_temp == 0:
                        picks.append(top_positions(full_confidence[b], number_transfer_tokens))
                    else:  # multinomial without replacement, as Gumbel-top-k
                        w = F.softmax(full_confidence[b] / alg_temp, dim=-1)
                        gb = torch.zeros_like(w)
                        gb[lo:] = draws.position_gumbel(b, i, n)
                        picks.append(top_positions(torch.log(w) + gb, number_transfer_tokens))
                transfer_index = torch.stack(picks)
                x_ = torch.zeros_like(x, dtype=torch.long) + MASK
                x_[mask_index] = x0.clone()
                row_indices = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
                x[row_indices, transfer_index] = x_[row_indices, transfer_index]
    return x
