"""What the benchmark scripts share: the models they time (a random HF Llama and its dllm-jax
conversion), LLaDA's PyTorch reference loop they compare with, and interleaved best-of timing.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

from dllm_jax.weights import convert


def torch_llada_generate(model, prompt, steps, gen_length, block_length, mask_id):
    """LLaDA's reference loop (temperature 0, low_confidence), bidirectional HF forward."""
    import torch

    b, p = prompt.shape
    dev = prompt.device
    x = torch.full((b, p + gen_length), mask_id, dtype=torch.long, device=dev)
    x[:, :p] = prompt
    dtype = next(model.parameters()).dtype
    bias = torch.zeros(b, 1, x.shape[1], x.shape[1], device=dev, dtype=dtype)  # bidirectional
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for nb in range(num_blocks):
        lo, hi = p + nb * block_length, p + (nb + 1) * block_length
        mask_num = (x[:, lo:hi] == mask_id).sum(1, keepdim=True)
        num_transfer = torch.zeros(b, steps, dtype=torch.long, device=dev) + mask_num // steps
        for i in range(b):
            num_transfer[i, :int(mask_num[i] % steps)] += 1
        for i in range(steps):
            mask_index = x == mask_id
            with torch.no_grad():
                logits = model(input_ids=x, attention_mask=bias).logits
            logits[:, :, mask_id] = -float("inf")
            x0 = torch.argmax(logits, dim=-1)
            x0_p = torch.gather(torch.softmax(logits.double(), -1), -1, x0[..., None])[..., 0]
            x0_p[:, hi:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, x0_p,
                               torch.tensor(-float("inf"), dtype=x0_p.dtype, device=dev))
            for j in range(b):
                _, sel = torch.topk(conf[j], k=int(num_transfer[j, i]))
                x[j, sel] = x0[j, sel]
    return x


def timed(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best wall time and best process CPU time (all threads) of each function over
    ``repeats`` rounds, after one warm-up call each (compilation for JAX). Each round runs every
    function once, so on a shared machine they all see the same changes of load."""
    for fn in fns.values():
        fn()
    best = {name: (float("inf"), float("inf")) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def random_model(args):
    """A random HF Llama (run bidirectionally) and its dllm-jax conversion."""
    import torch
    import transformers

    torch.manual_seed(args.seed)
    hf_cfg = transformers.LlamaConfig(
        hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3) // 8 * 8,
        num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
        vocab_size=args.vocab, max_position_embeddings=1024, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(f"{tmp}/hf")
        model = convert.from_pretrained(f"{tmp}/hf")
    return hf, model
