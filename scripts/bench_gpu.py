"""GPU benchmark at the LLaDA-8B shape: denoise_step MFU, sampler tokens/s and peak memory,
each against the PyTorch reference (HF Llama-shaped model with SDPA, LLaDA's generate loop) on
the same GPU in the same run. Random bf16 weights (nothing to download).

    python scripts/bench_gpu.py                       # 8B shape, batch 1, 8, 32
    python scripts/bench_gpu.py --quick               # tiny shapes: checks the script anywhere

Prints one table per section and, last, ``mfu_b32: X.XX  speedup_vs_torch_b32: Y.YY``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import numpy as np


def measured_peak_tflops(jnp, jax, n: int = 8192, reps: int = 20) -> float:
    """bf16 matmul throughput of this device (the MFU denominator)."""
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def forward_flops(cfg, batch: int, length: int) -> float:
    """Matmul FLOPs of one forward: 2 * params * tokens plus attention scores and values."""
    per_tok = 2 * (cfg.num_params - cfg.vocab_size * cfg.hidden_size)  # embedding lookup free
    attn = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length  # QK^T and PV per token
    return batch * length * (per_tok + attn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-length", type=int, default=64)
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from dllm_jax.model.config import llada_8b
    from dllm_jax.model.transformer import denoise_step, init_model
    from dllm_jax.sampling import LLaDAConfig, generate

    cfg = dataclasses.replace(llada_8b(), dtype="bfloat16")
    if args.quick:
        cfg = dataclasses.replace(cfg, hidden_size=256, num_layers=2, num_heads=8,
                                  num_kv_heads=8, head_dim=32, intermediate_size=512,
                                  vocab_size=4096, mask_token_id=4095)
        args.gen_length, args.steps, args.block_length, args.batches = 32, 8, 16, "1,2"
    batches = [int(b) for b in args.batches.split(",")]
    dev = jax.devices()[0]
    print(f"date {time.strftime('%Y-%m-%d')}; device {dev.device_kind}; jax {jax.__version__}; "
          f"python {platform.python_version()}; config {vars(args)}")
    peak = measured_peak_tflops(jnp, jax, n=1024 if args.quick else 8192)
    print(f"measured bf16 matmul peak: {peak:.1f} TFLOP/s")
    model = init_model(cfg, seed=0)
    length = args.prompt_length + args.gen_length
    rows = {}
    for b in batches:
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.mask_token_id, (b, length)))
        denoise_step(model, tokens).block_until_ready()
        reps = 5
        t0 = time.perf_counter()
        for _ in range(reps):
            out = denoise_step(model, tokens)
        out.block_until_ready()
        sec = (time.perf_counter() - t0) / reps
        tflops = forward_flops(cfg, b, length) / sec / 1e12
        prompt = np.random.default_rng(1).integers(0, cfg.mask_token_id, (b, args.prompt_length))
        scfg = LLaDAConfig(steps=args.steps, gen_length=args.gen_length,
                           block_length=args.block_length)
        generate(model, prompt, config=scfg, key=0).sequences.block_until_ready()
        t0 = time.perf_counter()
        generate(model, prompt, config=scfg, key=0).sequences.block_until_ready()
        gsec = time.perf_counter() - t0
        stats = dev.memory_stats() or {}
        rows[b] = dict(step_s=sec, tflops=tflops, mfu=tflops / peak,
                       tok_s=b * args.gen_length / gsec,
                       peak_gb=stats.get("peak_bytes_in_use", 0) / 2**30)
        print(f"jax   batch {b:>3}: denoise_step {sec * 1e3:8.1f} ms  {tflops:7.1f} TFLOP/s  "
              f"MFU {tflops / peak:5.1%}  sampler {rows[b]['tok_s']:8.1f} tok/s  "
              f"peak {rows[b]['peak_gb']:.1f} GiB")
    del model
    torch_rows = {}
    if not args.skip_torch:
        torch_rows = _torch_side(cfg, args, batches)
    b = batches[-1]
    speed = rows[b]["tok_s"] / torch_rows[b]["tok_s"] if torch_rows else float("nan")
    print(f"mfu_b{b}: {rows[b]['mfu']:.2f}  speedup_vs_torch_b{b}: {speed:.2f}")


def _torch_side(cfg, args, batches):
    import torch
    import transformers
    from bench_sampler import torch_llada_generate

    hf_cfg = transformers.LlamaConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, vocab_size=cfg.vocab_size,
        rope_theta=cfg.rope_theta, tie_word_embeddings=False, attn_implementation="sdpa")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.device(device):
        hf = transformers.LlamaForCausalLM(hf_cfg).to(torch.bfloat16).eval()
    out = {}
    length = args.prompt_length + args.gen_length
    for b in batches:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        tokens = torch.randint(0, cfg.mask_token_id, (b, length), device=device)
        bias = torch.zeros(b, 1, length, length, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            hf(input_ids=tokens, attention_mask=bias)
            sync()
            t0 = time.perf_counter()
            for _ in range(5):
                hf(input_ids=tokens, attention_mask=bias)
            sync()
        sec = (time.perf_counter() - t0) / 5
        prompt = torch.randint(0, cfg.mask_token_id, (b, args.prompt_length), device=device)
        sync()
        t0 = time.perf_counter()
        torch_llada_generate(hf, prompt, args.steps, args.gen_length, args.block_length,
                             cfg.mask_token_id)
        sync()
        gsec = time.perf_counter() - t0
        out[b] = dict(step_s=sec, tok_s=b * args.gen_length / gsec,
                      peak_gb=(torch.cuda.max_memory_allocated() / 2**30
                                if device == "cuda" else 0.0))
        print(f"torch batch {b:>3}: forward {sec * 1e3:8.1f} ms  sampler "
              f"{out[b]['tok_s']:8.1f} tok/s  peak {out[b]['peak_gb']:.1f} GiB")
    return out


if __name__ == "__main__":
    main()
