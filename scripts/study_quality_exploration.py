"""Quality vs exploration: pass@k of random remasking, low-confidence remasking and IMH global
tempering at several alphas, on a built-in reasoning task with a trained tiny model.

    python scripts/study_quality_exploration.py --model out/demo/sft/model --task addition
    python scripts/study_quality_exploration.py --quick      # trains a small model first

Draws n samples per held-out prompt (temperature 1 for every sampler) and writes
``pass_at_k.png`` (pass@k for k = 1..n), ``results.json`` and a Markdown table to ``--out``.
Sequence entropy is the plug-in entropy of each prompt's empirical distribution over distinct
completions (nats), averaged over prompts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="trained checkpoint with char_tokenizer.json (demo output)")
    ap.add_argument("--task", default="addition")
    ap.add_argument("--out", default="out/study")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--alphas", default="2,4,8")
    ap.add_argument("--num-candidates", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="train a small model if none given")
    args = ap.parse_args()

    import dllm_jax
    from dllm_jax.eval.metrics import pass_at_k
    from dllm_jax.programs.datasources import TaskSource
    from dllm_jax.programs.demo import DemoConfig, sft_phase
    from dllm_jax.sampling import IMHConfig, LLaDAConfig, generate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"config: {vars(args)}", flush=True)
    test = TaskSource(args.task, args.seed, args.prompts, split="test")
    if args.model:
        model = dllm_jax.from_pretrained(args.model)
    else:
        cfg = (DemoConfig.quick if args.quick else DemoConfig)(task=args.task, seed=args.seed)
        print("no --model: training one with the demo's SFT settings", flush=True)
        model, _ = sft_phase(cfg, out / "sft")
    a = test.answer_length
    samplers = {
        "random": LLaDAConfig(steps=a, gen_length=a, block_length=a, temperature=1.0,
                              remasking="random"),
        "low_confidence": LLaDAConfig(steps=a, gen_length=a, block_length=a, temperature=1.0,
                                      remasking="low_confidence"),
    }
    for alpha in (float(x) for x in args.alphas.split(",")):
        samplers[f"imh_alpha{alpha:g}"] = IMHConfig(
            alpha=alpha, num_candidates=args.num_candidates, gen_length=a, block_length=a,
            steps=a, proposal="random", proposal_temperature=1.0)
    n = args.samples
    rows = np.repeat(np.arange(args.prompts), n)
    prompts = test.prompts(rows)
    results = {}
    for name, cfg in samplers.items():
        t0 = time.perf_counter()
        seqs = np.asarray(generate(model, prompts, config=cfg, key=args.seed).sequences)
        comp = seqs[:, test.prompt_length:]
        correct = test.rewards(rows, comp).reshape(args.prompts, n) >= 1.0
        c = correct.sum(1)
        curve = [float(np.mean([pass_at_k(n, int(ci), k) for ci in c])) for k in range(1, n + 1)]
        ents = []
        for row in comp.reshape(args.prompts, n, -1):
            _, counts = np.unique(row, axis=0, return_counts=True)
            p = counts / counts.sum()
            ents.append(float(-(p * np.log(p)).sum()))
        results[name] = {"pass_at_k": curve, "entropy": float(np.mean(ents)),
                         "seconds": time.perf_counter() - t0}
        print(f"{name:<18} pass@1 {curve[0]:.3f}  pass@8 {curve[7]:.3f}  pass@{n} {curve[-1]:.3f}"
              f"  entropy {np.mean(ents):.3f}  ({results[name]['seconds']:.1f}s)", flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = np.arange(1, n + 1)
    for name, r in results.items():
        ax.plot(ks, r["pass_at_k"], label=f"{name} (H={r['entropy']:.2f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_title(f"{args.task}: {args.prompts} held-out prompts, n={n} samples each")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pass_at_k.png", dpi=100)
    (out / "results.json").write_text(json.dumps({"config": vars(args), "results": results},
                                                 indent=2))
    lines = ["| sampler | pass@1 | pass@8 | pass@64 | sequence entropy |", "|---|---|---|---|---|"]
    for name, r in results.items():
        pk = r["pass_at_k"]
        lines.append(f"| {name} | {pk[0]:.3f} | {pk[min(7, n - 1)]:.3f} | {pk[-1]:.3f} | "
                     f"{r['entropy']:.3f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'pass_at_k.png'}")


if __name__ == "__main__":
    main()
