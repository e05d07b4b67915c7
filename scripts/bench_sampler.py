"""Sampler throughput: dllm-jax ``generate`` vs a straightforward PyTorch LLaDA ``generate`` loop.

Both run the same weights (a small random HF Llama run bidirectionally, converted with our
converter) and the same settings (low-confidence remasking, temperature 0) in one process. The
PyTorch side follows LLaDA's reference loop: one full forward per step, no cache. dllm-jax runs
without cache, with the prefix cache and with the dual cache. Prints tokens/s for each and, as
the last line, ``speedup_vs_torch: X.XX`` (dllm-jax without cache over PyTorch).

    python scripts/bench_sampler.py [--quick] [--batch 4 --gen-length 64 ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, one repeat")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=16)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.gen_length, args.steps, args.repeats, args.layers = 32, 32, 1, 2

    import jax
    import torch
    import transformers

    from dllm_jax.sampling import LLaDAConfig, generate
    from dllm_jax.weights import convert as convert

    print(f"config: {vars(args)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
          f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}")
    torch.manual_seed(args.seed)
    mask_id = args.vocab - 1
    hf_cfg = transformers.LlamaConfig(
        hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3) // 8 * 8,
        num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
        vocab_size=args.vocab, max_position_embeddings=1024, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(f"{tmp}/hf")
        model = convert.from_pretrained(f"{tmp}/hf")
    rng = np.random.default_rng(args.seed)
    prompt = rng.integers(0, mask_id, (args.batch, args.prompt_length)).astype(np.int32)
    tokens = args.batch * args.gen_length
    kw = dict(steps=args.steps, gen_length=args.gen_length, block_length=args.block_length,
              mask_id=mask_id)

    def timed(fn):
        fn()  # warm-up (compilation for JAX)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    results = {}
    ref = torch_llada_generate(hf, torch.as_tensor(prompt, dtype=torch.long), **kw).numpy()
    results["torch"] = timed(lambda: torch_llada_generate(
        hf, torch.as_tensor(prompt, dtype=torch.long), **kw))
    for cache in ("none", "prefix", "dual"):
        cfg = LLaDAConfig(**kw, cache=cache)
        out = generate(model, prompt, config=cfg, key=0)
        seqs = np.asarray(out.sequences)
        agree = float((seqs[:, args.prompt_length:] == ref[:, args.prompt_length:]).mean())
        results[cache] = timed(lambda cfg=cfg: jax.block_until_ready(
            generate(model, prompt, config=cfg, key=0).sequences))
        print(f"dllm-jax cache={cache}: token agreement with torch reference {agree:.3f}")
    print(f"{'run':<22}{'seconds':>10}{'tokens/s':>12}{'vs torch':>10}")
    for name, sec in results.items():
        label = "torch reference loop" if name == "torch" else f"dllm-jax cache={name}"
        print(f"{label:<22}{sec:>10.3f}{tokens / sec:>12.1f}{results['torch'] / sec:>10.2f}")
    print(f"speedup_vs_torch: {results['torch'] / results['none']:.2f}")


if __name__ == "__main__":
    main()
