"""lm-eval loglikelihood throughput: the ``dllm_jax`` adapter vs LLaDA's estimator in PyTorch.

Both run the same weights (a small random HF Llama run bidirectionally, converted with our
converter) on the same requests with the same ``mc_num`` and ``batch_size``, in one process.
The PyTorch side is LLaDA's ``eval_llada.py`` loop (``_forward_process``, ``get_loglikelihood``):
per request ``mc_num / batch_size`` forwards of ``batch_size`` copies, a ``randperm`` per copy,
the cross-entropy of the masked tokens over the mask ratio. The adapter runs
``Runner.loglikelihoods`` (one compiled call per request, its rounds in a ``lax.map``, shapes
padded to buckets). Times are the best of ``--repeats`` after a warm-up (JAX compilation
excluded), wall and process CPU seconds. The two estimates are Monte-Carlo draws of the same
quantity with different randomness; their mean absolute difference is printed beside the
Monte-Carlo spread. Last line: ``speedup_vs_torch: X.XX`` (requests/s over requests/s).

    python scripts/bench_lm_eval.py [--quick] [--requests 32 --mc-num 64 --batch-size 16 ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import random_model, timed  # noqa: E402

from dllm_jax.integrations.model_args import ModelArgs  # noqa: E402
from dllm_jax.integrations.runner import Runner  # noqa: E402
from dllm_jax.sampling import LLaDAConfig  # noqa: E402


def torch_llada_loglikelihood(model, prefix, target, mc_num, batch_size, mask_id):
    """LLaDA's ``get_loglikelihood`` (cfg 0) with a bidirectional HF forward."""
    import torch
    import torch.nn.functional as F

    seq = torch.cat([prefix, target])[None, :].repeat(batch_size, 1)
    b, length = seq.shape
    p = len(prefix)
    bias = torch.zeros(b, 1, length, length)  # bidirectional attention
    loss_acc = []
    for _ in range(mc_num // batch_size):
        target_len = length - p
        k = torch.randint(1, target_len + 1, ())
        x = torch.round(torch.linspace(float(k), k + (b - 1) * (target_len / b), steps=b)).long()
        x = ((x - 1) % target_len) + 1
        is_mask = torch.arange(target_len).repeat(b, 1) < x.unsqueeze(1)
        for i in range(b):
            is_mask[i] = is_mask[i][torch.randperm(target_len)]
        is_mask = torch.cat((torch.zeros(b, p, dtype=torch.bool), is_mask), dim=1)
        noisy = torch.where(is_mask, mask_id, seq)
        p_mask = (x / target_len).unsqueeze(1).repeat(1, length)
        with torch.no_grad():
            logits = model(input_ids=noisy, attention_mask=bias).logits
        loss = F.cross_entropy(logits[is_mask], seq[is_mask], reduction="none") / p_mask[is_mask]
        loss_acc.append((loss.sum() / b).item())
    return -sum(loss_acc) / len(loss_acc)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few requests, one repeat")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--context", type=int, nargs=2, default=(24, 64),
                    help="context lengths drawn uniformly from this range")
    ap.add_argument("--continuation", type=int, nargs=2, default=(1, 8))
    ap.add_argument("--mc-num", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.requests, args.repeats, args.layers = 4, 1, 2
    return args


def main() -> None:
    args = parse_args()
    import torch

    print(f"config: {vars(args)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.2f}; jax {jax.__version__} ({jax.default_backend()}), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    hf, model = random_model(argparse.Namespace(hidden=args.hidden, layers=args.layers,
                                                vocab=args.vocab, seed=args.seed))
    mask_id = args.vocab - 1
    rng = np.random.default_rng(args.seed)
    pairs = [(rng.integers(0, mask_id, int(rng.integers(*args.context) + 1)).tolist(),
              rng.integers(0, mask_id, int(rng.integers(*args.continuation) + 1)).tolist())
             for _ in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        margs = ModelArgs(pretrained=tmp, batch_size=args.batch_size, seed=args.seed,
                          sampler=LLaDAConfig(mask_id=mask_id), mc_num=args.mc_num,
                          mask_id=mask_id)
        runner = Runner(model, None, margs, progress=False)
    pairs_t = [(torch.as_tensor(c), torch.as_tensor(t)) for c, t in pairs]
    torch.manual_seed(args.seed)

    def run_torch():
        return [torch_llada_loglikelihood(hf, c, t, args.mc_num, args.batch_size, mask_id)
                for c, t in pairs_t]

    def run_jax():
        return [ll for ll, _ in runner.loglikelihoods(pairs)]

    ll_t, ll_j = np.array(run_torch()), np.array(run_jax())
    spread = np.array([np.std([torch_llada_loglikelihood(hf, c, t, args.mc_num,
                                                         args.batch_size, mask_id)
                               for _ in range(4)], ddof=1) for c, t in pairs_t[:4]])
    print(f"estimates: mean |torch - jax| {np.abs(ll_t - ll_j).mean():.4f} nats "
          f"(mean |ll| {np.abs(ll_t).mean():.2f}); torch's own spread over 4 reruns "
          f"(first 4 requests) {spread.mean():.4f}")
    results = timed({"torch": run_torch, "jax": run_jax}, args.repeats)
    print(f"load at the end of the timed runs {os.getloadavg()[0]:.2f}")
    print(f"{'run':<28}{'seconds':>10}{'requests/s':>12}{'cpu s':>9}")
    for name, (wall, cpu) in results.items():
        label = {"torch": "torch LLaDA estimator", "jax": "dllm_jax adapter"}[name]
        print(f"{label:<28}{wall:>10.3f}{args.requests / wall:>12.2f}{cpu:>9.3f}")
    print(f"cpu_ratio: {results['torch'][1] / results['jax'][1]:.2f}")
    print(f"speedup_vs_torch: {results['torch'][0] / results['jax'][0]:.2f}")


if __name__ == "__main__":
    main()
