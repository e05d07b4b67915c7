"""Sampler throughput: dllm-jax ``generate`` vs a straightforward PyTorch LLaDA ``generate`` loop,
and the sampler vs the bare forward passes it runs.

Both run the same weights (a small random HF Llama run bidirectionally, converted with our
converter) and the same settings (low-confidence remasking, temperature 0) in one process. The
PyTorch side follows LLaDA's reference loop: one full forward per step, no cache. dllm-jax runs
without cache, with the prefix cache, with the dual cache, and with the dual cache and a
confidence threshold (Fast-dLLM's parallel decoding).

Also measured in the same process: the bare forward passes the uncached sampler runs (the same
number of full forwards with the block's logits, each feeding a token derived from them back
into the canvas so none can be hoisted out of the loop) and the ratio sampler / forwards, the
cost of everything around the forward; the sampler's work per step alone (on random logits) for
a few configurations; and XLA's ``cost_analysis`` (flops, bytes accessed) of one step's forward
and of the sampler's work on its logits (keys, token sampler, position scorer, transfer rule,
canvas write, record). Times are the best of ``--repeats`` after a warm-up, in wall and in
process CPU seconds. Prints tokens/s for each run and, as the last line,
``speedup_vs_torch: X.XX`` (dllm-jax without cache over PyTorch).

    python scripts/bench_sampler.py [--quick] [--batch 4 --gen-length 64 --threshold 0.9 ...]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
from bench_common import random_model, timed, torch_llada_generate
from flax import nnx

from dllm_jax.sampling import DreamConfig, LLaDAConfig, generate
from dllm_jax.sampling.loop import Block, Carry, initial_canvas, schedule_arrays
from dllm_jax.sampling.plan import row_keys_of
from dllm_jax.sampling.record import Recorder


@functools.partial(jax.jit, static_argnums=(0, 4))
def bare_forwards(graphdef, state, canvas_BL, amask_BL, plan):
    """The full forwards an uncached ``plan`` runs (block logits only), one per step slot. Each
    writes a token derived from a max over its logits into the block (a plain reduction, far
    cheaper than any sampler), so the next forward depends on it and none can be hoisted."""
    model = nnx.merge(graphdef, state)
    p, n = canvas_BL.shape[1] - plan.gen_length, plan.block_length

    def body(x_BL, t):
        start = p + t // plan.steps_per_block * n
        logits_BNV = model(x_BL, amask_BL, window=(start, n)).astype(jnp.float32)
        x0_BN = (jnp.max(logits_BNV, axis=-1) > 0).astype(jnp.int32)
        return jax.lax.dynamic_update_slice_in_dim(x_BL, x0_BN, start, axis=1), None

    x, _ = jax.lax.scan(body, canvas_BL, jnp.arange(plan.num_blocks * plan.steps_per_block))
    return x


def sampler_step(plan, b: int, p: int, record: bool):
    """The sampler's work on one step's logits: ``loop.Block.commit`` (keys, token sampler,
    position scorer, transfer rule, canvas write, record) for the first block, at prompt
    width ``p``: ``(logits [B, N, V], canvas [B, L], t, key) -> (canvas, commit record, step
    record)``."""
    rec = Recorder(record, False)
    counts, probs = schedule_arrays(plan)

    def step(logits_BNV, x_BL, t, key):
        block = Block(plan, row_keys_of(key, b), counts, probs, rec, jnp.int32(0), jnp.int32(p),
                      p)
        carry, stats = block.commit(Carry(x_BL, rec.empty(b, plan.gen_length)),
                                    t % plan.steps_per_block, logits_BNV, None)
        return carry.canvas_BL, carry.commits, stats

    return step


def step_costs(model, prompt_BP, plan, record: bool) -> dict[str, dict[str, float]]:
    """XLA's cost analysis of one step at the first block: the forward alone, and the sampler's
    work on its logits (``sampler_step``)."""
    b, p = prompt_BP.shape
    canvas, amask = initial_canvas(jnp.asarray(prompt_BP), jnp.ones_like(prompt_BP), plan)

    def forward(x_BL):
        return model(x_BL, amask, window=(p, plan.block_length)).astype(jnp.float32)

    args = (jax.eval_shape(forward, canvas), canvas, jnp.int32(0), jax.random.PRNGKey(0))
    costs = {}
    for name, fn, fn_args in (("forward", forward, (canvas,)),
                              ("sampler step", sampler_step(plan, b, p, record), args)):
        ca = jax.jit(fn).lower(*fn_args).compile().cost_analysis()
        costs[name] = {"flops": ca.get("flops", 0.0), "bytes": ca.get("bytes accessed", 0.0),
                       "transcendentals": ca.get("transcendentals", 0.0)}
    return costs


def step_time(plan, b: int, p: int, vocab: int, record: bool, repeats: int,
              steps: int = 64) -> tuple[float, float]:
    """Wall and CPU seconds per step of ``sampler_step`` alone: ``steps`` steps in one compiled
    scan on random logits, shifted by the step index so that no step can be hoisted."""
    step = sampler_step(plan, b, p, record)
    logits = 3 * jax.random.normal(jax.random.PRNGKey(1), (b, plan.block_length, vocab))
    canvas, _ = initial_canvas(jnp.zeros((b, p), jnp.int32), jnp.ones((b, p), jnp.int32), plan)

    @jax.jit
    def run(logits_BNV, x_BL, key):
        def body(x, t):
            x, commits, stats = step(logits_BNV + 1e-3 * t, x, t, key)
            return x, (commits, stats)

        return jax.lax.scan(body, x_BL, jnp.arange(steps))

    wall, cpu = timed({"steps": lambda: jax.block_until_ready(
        run(logits, canvas, jax.random.PRNGKey(0)))}, repeats)["steps"]
    return wall / steps, cpu / steps


def print_costs(model, prompt, cfg) -> None:
    plan = cfg.plan(model.config, prompt.shape[1])
    for record in (False, True):
        for name, c in step_costs(model, prompt, plan, record).items():
            if name == "forward" and record:
                continue
            label = f"{name} (record={record})" if name != "forward" else name
            print(f"cost of one step, {label:<27}: {c['flops'] / 1e6:10.2f} MFLOP "
                  f"{c['bytes'] / 1e6:9.2f} MB accessed {c['transcendentals'] / 1e6:8.3f} M "
                  f"transcendentals")


def print_step_times(model, args) -> None:
    """The sampler's work around the forward, per step, for a few common configurations."""
    kw = dict(steps=args.steps, block_length=args.block_length, mask_id=args.vocab - 1)
    configs = {
        "LLaDA greedy low_confidence": (LLaDAConfig(**kw, gen_length=args.gen_length), False),
        "  the same, record=True": (LLaDAConfig(**kw, gen_length=args.gen_length), True),
        "LLaDA temperature 1": (LLaDAConfig(**kw, gen_length=args.gen_length,
                                            temperature=1.0), False),
        "Dream defaults (T 1, top_k 50)": (DreamConfig(**kw, max_new_tokens=args.gen_length),
                                           False),
    }
    print(f"{'sampler work per step (no forward)':<36}{'wall us':>10}{'cpu us':>10}")
    for name, (cfg, record) in configs.items():
        plan = cfg.plan(model.config, args.prompt_length)
        wall, cpu = step_time(plan, args.batch, args.prompt_length, args.vocab, record,
                              args.repeats)
        print(f"{name:<36}{wall * 1e6:>10.1f}{cpu * 1e6:>10.1f}")


def parse_args() -> argparse.Namespace:
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
    ap.add_argument("--threshold", type=float, default=0.9, help="Fast-dLLM's confidence")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.gen_length, args.steps, args.repeats, args.layers = 32, 32, 1, 2
    return args


def print_results(results: dict[str, tuple[float, float]], tokens: int) -> None:
    print(f"load at the end of the timed runs {os.getloadavg()[0]:.2f}")
    print(f"{'run':<26}{'seconds':>10}{'tokens/s':>12}{'vs torch':>10}{'cpu s':>9}"
          f"{'cpu vs torch':>14}")
    torch_wall, torch_cpu = results["torch"]
    for name, (wall, cpu) in results.items():
        label = {"torch": "torch reference loop", "forwards": "bare forwards (no cache)"}.get(
            name, f"dllm-jax cache={name}")
        print(f"{label:<26}{wall:>10.3f}{tokens / wall:>12.1f}{torch_wall / wall:>10.2f}"
              f"{cpu:>9.3f}{torch_cpu / cpu:>14.2f}")


def main() -> None:
    args = parse_args()

    import torch

    print(f"config: {vars(args)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.2f}; jax {jax.__version__} ({jax.default_backend()}), "
          f"torch {torch.__version__}")
    hf, model = random_model(args)
    mask_id = args.vocab - 1
    rng = np.random.default_rng(args.seed)
    prompt = rng.integers(0, mask_id, (args.batch, args.prompt_length)).astype(np.int32)
    kw = dict(steps=args.steps, gen_length=args.gen_length, block_length=args.block_length,
              mask_id=mask_id)
    thr = f"dual+t{args.threshold:g}"
    runs = {"none": LLaDAConfig(**kw), "prefix": LLaDAConfig(**kw, cache="prefix"),
            "dual": LLaDAConfig(**kw, cache="dual"),
            thr: LLaDAConfig(**kw, cache="dual", threshold=args.threshold)}

    prompt_t = torch.as_tensor(prompt, dtype=torch.long)
    ref = torch_llada_generate(hf, prompt_t, **kw).numpy()
    for name, cfg in runs.items():
        seqs = np.asarray(generate(model, prompt, config=cfg, key=0).sequences)
        agree = float((seqs[:, args.prompt_length:] == ref[:, args.prompt_length:]).mean())
        print(f"dllm-jax cache={name}: token agreement with torch reference {agree:.3f}")
    plan = runs["none"].plan(model.config, args.prompt_length)
    canvas, amask = initial_canvas(prompt, np.ones_like(prompt), plan)
    graphdef, state = nnx.split(model)
    fns = {"torch": lambda: torch_llada_generate(hf, prompt_t, **kw)}
    fns.update({name: lambda cfg=cfg: jax.block_until_ready(
        generate(model, prompt, config=cfg, key=0).sequences) for name, cfg in runs.items()})
    fns["forwards"] = lambda: jax.block_until_ready(
        bare_forwards(graphdef, state, canvas, amask, plan))
    results = timed(fns, args.repeats)

    print_results(results, args.batch * args.gen_length)
    print_costs(model, prompt, runs["none"])
    print_step_times(model, args)
    for i, unit in enumerate(("wall", "cpu")):
        print(f"sampler_over_forwards (no cache, {unit}): "
              f"{results['none'][i] / results['forwards'][i]:.3f}")
    torch_wall = results["torch"][0]
    print(f"speedup_vs_torch (dual cache, threshold {args.threshold:g}): "
          f"{torch_wall / results[thr][0]:.2f}")
    print(f"speedup_vs_torch: {torch_wall / results['none'][0]:.2f}")


if __name__ == "__main__":
    main()
