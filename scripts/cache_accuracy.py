"""Accuracy and speed of the block KV cache and of parallel decoding on a built-in task with a
trained model, against LLaDA's PyTorch reference loop on the same weights.

    python scripts/cache_accuracy.py --model out/demo/sft/model --task addition [--threshold 0.9]
    python scripts/cache_accuracy.py --model out/study/sft_s0/model --task sudoku --batch 1

Greedy low-confidence decoding with ``--blocks`` blocks (two by default), on held-out
puzzles: one token per step without cache, with the prefix cache and with the dual cache; and
with a Fast-dLLM confidence threshold (a block runs until complete, committing every candidate
at or above it) without cache and with the dual cache. For each: accuracy, the puzzles it gets
right that the uncached run gets wrong and the reverse, token agreement with the uncached run,
steps per block (per row), and tokens/s (best of ``--repeats`` after a warm-up, so compilation
is excluded). Accuracy is measured on all ``--num-test`` prompts in one batch; speed on the first
``--time-rows`` of them in batches of ``--batch`` rows for every run alike (a batch's remaining
step slots in a block are skipped only when all its rows have finished the block, so the
threshold saves more in small batches); the batched decode of the timed rows is checked
token for token against the single-batch decode. The same prompts also run through LLaDA's
reference loop (``bench_sampler.torch_llada_generate``: PyTorch, one full forward per step, no
cache) on the same weights exported as an HF Llama; tokens/s are also given as a ratio to it
(same process).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import jax
import numpy as np
from bench_sampler import timed, torch_llada_generate

from dllm_jax.programs.datasources import TaskSource
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


def chunks(prompts: np.ndarray, batch: int) -> list[np.ndarray]:
    """``prompts`` in batches of ``batch`` rows (the rows a whole number of batches)."""
    if len(prompts) % batch:
        raise SystemExit(f"--time-rows {len(prompts)} is not a multiple of --batch {batch}")
    return [prompts[i:i + batch] for i in range(0, len(prompts), batch)]


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
    ap.add_argument("--blocks", type=int, default=2, help="blocks per answer")
    ap.add_argument("--batch", type=int, help="rows per call when timing (default: all)")
    ap.add_argument("--time-rows", type=int, help="rows timed (default: --num-test)")
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
    if a % args.blocks:
        raise SystemExit(f"--blocks {args.blocks} does not divide the answer length {a}")
    n = a // args.blocks
    base = LLaDAConfig(steps=a, gen_length=a, block_length=n)
    runs = {"none": base, "prefix": dataclasses.replace(base, cache="prefix"),
            "dual": dataclasses.replace(base, cache="dual"),
            f"none+t{args.threshold:g}": dataclasses.replace(base, threshold=args.threshold),
            f"dual+t{args.threshold:g}": dataclasses.replace(base, cache="dual",
                                                             threshold=args.threshold)}
    hf = torch_twin(args.model)
    kw = dict(steps=a, gen_length=a, block_length=n, mask_id=model.config.mask_token_id)
    ref = torch_llada_generate(hf, torch.as_tensor(prompts, dtype=torch.long), **kw).numpy()
    decoded = {"torch reference loop": (ref[:, test.prompt_length:], float(n))}
    decoded.update({f"dllm-jax cache={name}": decode(model, prompts, cfg)
                    for name, cfg in runs.items()})
    timed_rows = chunks(prompts[:args.time_rows or len(prompts)], args.batch or len(prompts))
    timed_t = [torch.as_tensor(c, dtype=torch.long) for c in timed_rows]
    fns = {"torch reference loop": lambda: [torch_llada_generate(hf, c, **kw) for c in timed_t]}
    fns.update({f"dllm-jax cache={name}": lambda cfg=cfg: [jax.block_until_ready(
        generate(model, c, config=cfg, key=0).sequences) for c in timed_rows]
        for name, cfg in runs.items()})
    agree = {name: float(np.mean(np.concatenate([np.asarray(x) for x in fn()])[
        :, test.prompt_length:] == decoded[name][0][:sum(map(len, timed_rows))]))
        for name, fn in fns.items()}
    print(f"timed rows {sum(map(len, timed_rows))} in batches of {len(timed_rows[0])}; "
          f"batched vs single-batch token agreement: {agree}")
    times = timed(fns, args.repeats)
    results = {name: (*decoded[name], times[name]) for name in fns}
    none = results["dllm-jax cache=none"][0]
    right_none = test.rewards(rows, none) >= 1
    torch_wall, torch_cpu = results["torch reference loop"][2]
    timed_tokens = sum(map(len, timed_rows)) * a
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    print("| run | accuracy | puzzles won / lost vs no cache | token agreement with no cache | "
          "steps per block | tokens/s | vs torch | CPU time vs torch |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, (comp, steps, (wall, cpu)) in results.items():
        right = test.rewards(rows, comp) >= 1
        print(f"| {name} | {right.mean():.3f} | +{(right & ~right_none).sum()} / "
              f"-{(right_none & ~right).sum()} | {(comp == none).mean():.3f} | {steps:.2f} | "
              f"{timed_tokens / wall:.0f} | {torch_wall / wall:.2f} | {torch_cpu / cpu:.2f} |")


if __name__ == "__main__":
    main()
