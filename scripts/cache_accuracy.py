"""Accuracy and speed of the block KV cache and of parallel decoding on a built-in task with a
trained model, against LLaDA's PyTorch reference loop on the same weights.

    python scripts/cache_accuracy.py --model out/demo/sft/model --task addition [--threshold 0.9]

Greedy low-confidence decoding with two blocks (block length = answer length / 2), on held-out
puzzles: one token per step without cache, with the prefix cache and with the dual cache; and
with a Fast-dLLM confidence threshold (a block runs until complete, committing every candidate
at or above it) without cache and with the dual cache. For each: accuracy, the puzzles it gets
right that the uncached run gets wrong and the reverse, token agreement with the uncached run,
steps per block (per row), and tokens/s (best of ``--repeats`` after a warm-up, so compilation
is excluded; all prompts in one batch). The same prompts also run through LLaDA's reference loop
(``bench_sampler.torch_llada_generate``: PyTorch, one full forward per step, no cache) on the
same weights exported as an HF Llama; tokens/s are also given as a ratio to it (same process).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import jax
import numpy as np
from bench_sampler import timed, torch_llada_generate

from dllm_jax.data.sources import TaskSource
from dllm_jax.sampling import LLaDAConfig, generate
from dllm_jax.weights import export_hf, from_pretrained


def torch_twin(model_dir: str):
    """The checkpoint as an HF Llama (the same weights and maths; the reference loop runs it
    bidirectionally)."""
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(from_pretrained(model_dir, family="llama"), f"{tmp}/hf")
        return transformers.AutoModelForCausalLM.from_pretrained(
            f"{tmp}/hf", torch_dtype=torch.float32).eval()


def decode(model, prompts, cfg) -> tuple[np.ndarray, float]:
    """Completions and steps per block (per row: the steps that committed something)."""
    out = generate(model, prompts, config=cfg, key=0, record=True)
    blocks = cfg.gen_length // cfg.block_length
    steps = float(np.asarray(out.trajectory.valid).sum(1).mean()) / blocks
    return np.asarray(out.sequences)[:, prompts.shape[1]:], steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--num-test", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    print(f"config: {vars(args)}")
    print(f"load {os.getloadavg()[0]:.2f}; jax {jax.__version__} ({jax.default_backend()}), "
          f"torch {torch.__version__}")
    test = TaskSource(args.task, args.seed, args.num_test, split="test")
    rows = np.arange(test.num_prompts)
    prompts = test.prompts(rows)
    model = from_pretrained(args.model)
    a = test.answer_length
    base = LLaDAConfig(steps=a, gen_length=a, block_length=a // 2)
    runs = {"none": base, "prefix": dataclasses.replace(base, cache="prefix"),
            "dual": dataclasses.replace(base, cache="dual"),
            f"none+t{args.threshold:g}": dataclasses.replace(base, threshold=args.threshold),
            f"dual+t{args.threshold:g}": dataclasses.replace(base, cache="dual",
                                                             threshold=args.threshold)}
    hf = torch_twin(args.model)
    kw = dict(steps=a, gen_length=a, block_length=a // 2, mask_id=model.config.mask_token_id)
    prompt_t = torch.as_tensor(prompts, dtype=torch.long)
    ref = torch_llada_generate(hf, prompt_t, **kw).numpy()[:, test.prompt_length:]
    decoded = {"torch reference loop": (ref, float(a // 2))}
    decoded.update({f"dllm-jax cache={name}": decode(model, prompts, cfg)
                    for name, cfg in runs.items()})
    fns = {"torch reference loop": lambda: torch_llada_generate(hf, prompt_t, **kw)}
    fns.update({f"dllm-jax cache={name}": lambda cfg=cfg: jax.block_until_ready(
        generate(model, prompts, config=cfg, key=0).sequences) for name, cfg in runs.items()})
    times = timed(fns, args.repeats)
    results = {name: (*decoded[name], times[name]) for name in fns}
    none = results["dllm-jax cache=none"][0]
    right_none = test.rewards(rows, none) >= 1
    torch_wall, torch_cpu = results["torch reference loop"][2]
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    print("| run | accuracy | puzzles won / lost vs no cache | token agreement with no cache | "
          "steps per block | tokens/s | vs torch | CPU time vs torch |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, (comp, steps, (wall, cpu)) in results.items():
        right = test.rewards(rows, comp) >= 1
        print(f"| {name} | {right.mean():.3f} | +{(right & ~right_none).sum()} / "
              f"-{(right_none & ~right).sum()} | {(comp == none).mean():.3f} | {steps:.2f} | "
              f"{comp.size / wall:.0f} | {torch_wall / wall:.2f} | {torch_cpu / cpu:.2f} |")


if __name__ == "__main__":
    main()
