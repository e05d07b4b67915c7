"""Token-exact agreement with straightforward NumPy re-implementations of the reference loops.

The references below follow the structure of ML-GSAI/LLaDA ``generate.py`` and Dream's
``generation_utils._sample`` line by line (NumPy instead of torch), calling only the model's
aligned logits. One documented deviation is shared: the MASK token is excluded from the argmax.
"""

import numpy as np
import pytest
import torch

from dllm_jax.model.transformer import denoise_step
from dllm_jax.sampling import DreamConfig, LLaDAConfig, generate
from dllm_jax.sampling.presets import torch_linspace_f32

MASK = 63


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _logits(model, x):
    return np.asarray(denoise_step(model, x)).astype(np.float64)


def llada_reference(model, prompt, steps, gen_length, block_length, cfg_scale=0.0,
                    logits_eos_inf=False, eos=1):
    """LLaDA generate(), temperature 0, remasking='low_confidence'."""
    b, p = prompt.shape
    x = np.full((b, p + gen_length), MASK, np.int64)
    x[:, :p] = prompt
    prompt_index = x != MASK
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for nb in range(num_blocks):
        lo, hi = p + nb * block_length, p + (nb + 1) * block_length
        block_mask_index = x[:, lo:hi] == MASK
        mask_num = block_mask_index.sum(1, keepdims=True)
        num_transfer = np.zeros((b, steps), np.int64) + mask_num // steps
        for i in range(b):
            num_transfer[i, :int(mask_num[i, 0] % steps)] += 1
        for i in range(steps):
            mask_index = x == MASK
            if cfg_scale > 0:
                un_x = x.copy()
                un_x[prompt_index] = MASK
                both = _logits(model, np.concatenate([x, un_x]))
                cond, un = both[:b], both[b:]
                logits = un + (cfg_scale + 1) * (cond - un)
            else:
                logits = _logits(model, x)
            if logits_eos_inf:
                logits[:, :, eos] = -np.inf
            pick = logits.copy()
            pick[:, :, MASK] = -np.inf  # the documented deviation: MASK is never produced
            x0 = pick.argmax(-1)
            p_ = _softmax(logits)
            x0_p = np.take_along_axis(p_, x0[..., None], -1)[..., 0]
            x0_p[:, hi:] = -np.inf
            x0 = np.where(mask_index, x0, x)
            confidence = np.where(mask_index, x0_p, -np.inf)
            for j in range(b):
                k = int(num_transfer[j, i])
                sel = np.argsort(-confidence[j], kind="stable")[:k]
                x[j, sel] = x0[j, sel]
    return x


def dream_reference(model, prompt, steps, max_new_tokens, alg, top_p=None, eps=1e-3):
    """Dream _sample(), temperature 0, algs other than 'origin'; batch of one row."""
    x = np.concatenate([prompt, np.full((1, max_new_tokens), MASK, np.int64)], 1)
    timesteps = torch.linspace(1, eps, steps + 1).numpy()
    for i in range(steps):
        mask_index = x == MASK
        logits = _logits(model, x)  # aligned: Dream's shift is applied by denoise_step
        mask_logits = logits[mask_index].astype(np.float32)
        t, s = timesteps[i], timesteps[i + 1]
        z = mask_logits
        if top_p is not None and top_p < 1:
            order = np.argsort(-z, -1, kind="stable")
            sz = np.take_along_axis(z, order, -1)
            cum = np.cumsum(_softmax(sz), -1)
            rm = cum > top_p
            rm[:, 1:] = rm[:, :-1].copy()
            rm[:, 0] = False
            drop = np.zeros_like(rm)
            np.put_along_axis(drop, order, rm, -1)
            z = np.where(drop, np.finfo(np.float32).min, z)
        probs = _softmax(z.astype(np.float64))
        pick = probs.copy()
        pick[:, MASK] = -1
        x0 = pick.argmax(-1)
        confidence = np.take_along_axis(probs, x0[:, None], -1)[:, 0]
        if alg == "topk_margin":
            sp = -np.sort(-probs, -1)
            confidence = sp[:, 0] - sp[:, 1]
        elif alg == "entropy":
            confidence = (probs * np.log(probs + 1e-10)).sum(-1)
        num_mask_token = np.float32(mask_index.sum() / mask_index.shape[0])
        n = (int(num_mask_token * (np.float32(1) - s / t)) if i < steps - 1
             else int(num_mask_token))
        full_conf = np.full(x.shape, -np.inf)
        full_conf[mask_index] = confidence
        if n > 0:
            sel = np.argsort(-full_conf[0], kind="stable")[:n]
            x_ = np.full(x.shape, MASK)
            x_[mask_index] = x0
            x[0, sel] = x_[0, sel]
    return x


def _strip(seq, p_len, eos=1, pad=1):
    seq = seq.copy()
    for row in seq:
        gen = row[p_len:]
        hits = np.flatnonzero(gen == eos)
        if hits.size:
            gen[hits[0] + 1:] = pad
    return seq


def test_torch_linspace_emulation_is_bit_exact():
    for steps, eps in [(8, 1e-3), (128, 1e-3), (512, 1e-3), (37, 0.01)]:
        ref = torch.linspace(1, eps, steps + 1).numpy()
        np.testing.assert_array_equal(torch_linspace_f32(1.0, eps, steps + 1), ref)


@pytest.mark.parametrize("kw", [
    dict(steps=16, gen_length=16, block_length=4),
    dict(steps=6, gen_length=12, block_length=6),  # several tokens per step, uneven split
    dict(steps=8, gen_length=16, block_length=8, cfg_scale=1.5),
    dict(steps=16, gen_length=16, block_length=16, logits_eos_inf=True),
])
def test_llada_matches_reference_at_temperature_zero(sharp_llada, kw):
    prompt = np.array([[3, 17, 22, 9, 41], [12, 5, 30, 2, 8]], np.int64)
    ref = llada_reference(sharp_llada, prompt, **kw)
    out = generate(sharp_llada, prompt, config=LLaDAConfig(**kw), key=0)
    np.testing.assert_array_equal(np.asarray(out.sequences), _strip(ref, prompt.shape[1]))
    assert len(set(ref[:, 5:].ravel().tolist())) > 3  # the test model is not degenerate


@pytest.mark.parametrize("alg,top_p", [("maskgit_plus", None), ("topk_margin", None),
                                       ("entropy", None), ("maskgit_plus", 0.9)])
def test_dream_matches_reference_at_temperature_zero(sharp_dream, alg, top_p):
    prompt = np.array([[3, 17, 22, 9]], np.int64)
    ref = dream_reference(sharp_dream, prompt, steps=12, max_new_tokens=12, alg=alg, top_p=top_p)
    out = generate(sharp_dream, prompt, config=DreamConfig(steps=12, max_new_tokens=12, alg=alg,
                                                     top_p=top_p), key=0)
    np.testing.assert_array_equal(np.asarray(out.sequences), _strip(ref, 4))
    assert len(set(ref[:, 4:].ravel().tolist())) > 3
