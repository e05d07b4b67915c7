"""Accuracy cost of the block KV cache on a built-in task with a trained model.

    python scripts/cache_accuracy.py --model out/demo/sft/model --task addition

Greedy low-confidence decoding with two blocks (block length = answer length / 2, one token per
step), with no cache, the prefix cache and the dual cache, on held-out puzzles; prints the
accuracy of each and the token agreement with the uncached run.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--num-test", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import dllm_jax
    from dllm_jax.data.sources import TaskSource
    from dllm_jax.sampling import LLaDAConfig, generate

    print(f"config: {vars(args)}")
    test = TaskSource(args.task, args.seed, args.num_test, split="test")
    rows = np.arange(test.num_prompts)
    model = dllm_jax.from_pretrained(args.model)
    a = test.answer_length
    base = LLaDAConfig(steps=a, gen_length=a, block_length=a // 2)
    ref = None
    print("| cache | accuracy | token agreement with no cache |\n|---|---|---|")
    for cache in ("none", "prefix", "dual"):
        cfg = dataclasses.replace(base, cache=cache)
        comp = np.asarray(generate(model, test.prompts(rows), config=cfg, key=args.seed)
                          .sequences)[:, test.prompt_length:]
        acc = float((test.rewards(rows, comp) >= 1).mean())
        ref = comp if ref is None else ref
        print(f"| {cache} | {acc:.3f} | {(comp == ref).mean():.3f} |")


if __name__ == "__main__":
    main()
