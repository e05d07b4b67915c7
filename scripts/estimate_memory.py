"""Per-device memory of LLaDA-8B programs (bf16, AdamW) on simulated meshes or TPU topologies.

Nothing is materialised: parameters, optimiser state and batches are abstract
(``jax.ShapeDtypeStruct`` with their shardings) and the real programs are compiled for the
mesh; XLA's memory analysis gives the bytes (``dllm_jax.programs.memory``). Programs:

- ``sft``: the SFT train step, ``--micro-batch`` rows x ``--seq-len`` tokens per device.
- ``rl``: the RL train step (TraceRL loss with its reference model): ``--rollouts`` rollouts
  of ``--prompt-len + --gen-len`` tokens, ``--states`` rows each, ``--rl-micro-batch`` rows per
  device per micro-batch (the rest is gradient accumulation).
- ``score``: the rollout policy's log-probs of all of an RL step's rows in one call.
- ``sampler``: one block (``--block``) of the dual-cache sampler over the rollouts' canvas.

Examples::

    python scripts/estimate_memory.py                              # everything, 8..64 devices
    python scripts/estimate_memory.py --programs rl --lora-ranks 0,16 --devices 8
    python scripts/estimate_memory.py --programs sft --devices 8 --layers full
    python scripts/estimate_memory.py --tpu v5e --devices 16       # needs libtpu

``--layers 1,2`` (default) compiles 1- and 2-layer variants and extrapolates linearly per layer
to the model's depth; ``--check N`` also compiles N layers and compares; ``--layers full``
compiles every layer. ``--tpu v5e|v4`` compiles for that TPU slice's devices
(``jax.experimental.topologies``; no TPU needed, but ``libtpu`` must be importable); use
``--layers full`` there (the TPU compiler's peak is not linear in the layer count at 1-2
layers). Results are in docs/training.md ("Memory").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

TPU_TOPOLOGIES = {  # chips -> topology name (1 chip: the first of one host's chips)
    "v5e": {1: "v5e:2x2", 4: "v5e:2x2", 8: "v5e:2x4", 16: "v5e:4x4", 32: "v5e:4x8",
            64: "v5e:8x8"},
    "v4": {1: "v4:2x2x1", 4: "v4:2x2x1", 8: "v4:2x2x2", 16: "v4:2x2x4", 32: "v4:2x4x4",
           64: "v4:4x4x4"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llada_8b", choices=("llada_8b", "dream_7b"))
    ap.add_argument("--programs", default="sampler,score,rl,sft",
                    help="comma-separated: sft, rl, score, sampler")
    ap.add_argument("--devices", default="8,16,32,64",
                    help="comma-separated device counts; each is an all-FSDP mesh (1, n, 1)")
    ap.add_argument("--tpu", default=None, choices=sorted(TPU_TOPOLOGIES),
                    help="compile for this TPU generation's slice of each device count")
    ap.add_argument("--micro-batch", type=int, default=1, help="SFT rows per device")
    ap.add_argument("--seq-len", type=int, default=2048, help="SFT tokens per row")
    ap.add_argument("--rollouts", type=int, default=64, help="RL rollouts per step")
    ap.add_argument("--group-size", type=int, default=8, help="RL rollouts per prompt")
    ap.add_argument("--states", type=int, default=4, help="RL rows (states) per rollout")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--gen-len", type=int, default=256)
    ap.add_argument("--block", type=int, default=32, help="sampler block length")
    ap.add_argument("--rl-micro-batch", type=int, default=1, help="RL rows per device")
    ap.add_argument("--lora-ranks", default="0,16",
                    help="train-step variants: 0 = full fine-tuning, r > 0 = LoRA rank r")
    ap.add_argument("--remat", default="full", choices=("none", "full", "dots"))
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--layers", default="1,2",
                    help="'full' to compile every layer, or two layer counts to extrapolate from")
    ap.add_argument("--check", type=int, default=0,
                    help="also compile this many layers and compare with the extrapolation")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    args.programs = args.programs.split(",")
    unknown = sorted(set(args.programs) - {"sft", "rl", "score", "sampler"})
    if unknown:
        ap.error(f"unknown --programs {unknown}; choose from sft, rl, score, sampler")
    args.devices = [int(x) for x in args.devices.split(",")]
    args.lora_ranks = [int(x) for x in args.lora_ranks.split(",")]
    if args.layers != "full":
        args.layer_pair = [int(x) for x in args.layers.split(",")]
        if len(args.layer_pair) != 2 or args.layer_pair[0] == args.layer_pair[1]:
            ap.error("--layers needs 'full' or two different layer counts, e.g. 1,2")
    if args.tpu and any(n not in TPU_TOPOLOGIES[args.tpu] for n in args.devices):
        ap.error(f"--tpu {args.tpu} knows device counts {sorted(TPU_TOPOLOGIES[args.tpu])}")
    return args


def start_jax(args: argparse.Namespace) -> None:
    """Backend setup that must happen before JAX initialises."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.tpu:  # libtpu otherwise warns that it cannot find the (absent) TPU host
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count="
                                   f"{max(args.devices)}")


def devices_for(args: argparse.Namespace, n: int) -> list:
    import jax

    if not args.tpu:
        if len(jax.devices()) < n:
            raise SystemExit(f"error: need {n} devices, JAX sees {len(jax.devices())}")
        return jax.devices()[:n]
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="tpu",
                                            topology_name=TPU_TOPOLOGIES[args.tpu][n])
    except Exception as e:  # libtpu missing or refusing: one clear line
        raise SystemExit(f"error: cannot describe TPU topology {TPU_TOPOLOGIES[args.tpu][n]} "
                         f"(is libtpu installed?): {str(e).splitlines()[0]}") from None
    return list(topo.devices)[:n]


def variants(args: argparse.Namespace, n: int):
    """``(program, label, lora_rank, measure(config, mesh, log) -> report)`` to run on ``n``
    devices."""
    from dllm_jax.programs import memory
    from dllm_jax.programs.config import RLConfig
    from dllm_jax.sampling import LLaDAConfig
    from dllm_jax.train.lora import LoRAConfig

    seq = args.prompt_len + args.gen_len
    rl_rows = args.rollouts * args.states
    rl = RLConfig(loss="tracerl", prompts_per_step=args.rollouts // args.group_size,
                  group_size=args.group_size, budget=args.states,
                  sampler=LLaDAConfig(steps=args.gen_len, gen_length=args.gen_len,
                                      block_length=args.block, temperature=1.0, cache="dual"))
    out = []
    for prog in args.programs:
        if prog == "sampler":
            out.append((prog, f"{args.rollouts} x {seq}, block {args.block}", 0,
                        lambda c, m, log: memory.measure_sampler(
                            c, m, rows=args.rollouts, seq_len=seq, block_length=args.block,
                            log=log)))
        elif prog == "score":
            out.append((prog, f"{rl_rows} x {seq}", 0, lambda c, m, log: memory.measure_score(
                c, m, rows=rl_rows, seq_len=seq, log=log)))
        for rank in args.lora_ranks if prog in ("sft", "rl") else ():
            lcfg = LoRAConfig(rank=rank, alpha=2.0 * max(rank, 1))
            setup = "full FT" if rank == 0 else f"LoRA r={rank}"
            if prog == "rl":
                accum = rl_rows // (n * args.rl_micro_batch)
                out.append((prog, f"{setup}, {rl_rows} x {seq}, accum {accum}", rank,
                            lambda c, m, log, lcfg=lcfg, accum=accum: memory.measure_train_step(
                                c, m, rows=rl_rows, seq_len=seq, grad_accum=accum, rl=rl,
                                lora_config=lcfg, log=log)))
            elif prog == "sft":
                rows = args.micro_batch * n
                out.append((prog, f"{setup}, {rows} x {args.seq_len}", rank,
                            lambda c, m, log, lcfg=lcfg, rows=rows: memory.measure_train_step(
                                c, m, rows=rows, seq_len=args.seq_len, lora_config=lcfg,
                                log=log)))
    return out


def measure_at_depth(args: argparse.Namespace, config, mesh, measure):
    """The report at the model's depth (compiled, or extrapolated from two depths) and how."""
    from dllm_jax.programs import memory

    log = lambda s: print(s, flush=True)  # noqa: E731
    run = lambda layers: measure(config.replace(num_layers=layers), mesh, log)  # noqa: E731
    if args.layers == "full":
        return run(config.num_layers), "compiled"
    lo, hi = args.layer_pair
    a, b = run(lo), run(hi)
    rep = memory.extrapolate(a, b, config.num_layers)
    if args.check:
        c = run(args.check)
        pred = memory.extrapolate(a, b, args.check)
        print(f"  check at {args.check} layers: measured peak {c.peak_bytes / memory.GIB:.3f} "
              f"GiB, line predicts {pred.peak_bytes / memory.GIB:.3f} GiB", flush=True)
    return rep, f"from {lo}+{hi} layers"


def with_rl_residents(rows: list[dict]) -> None:
    """While the RL step rolls out and scores, the train state and the reference parameters
    stay on the device: add them (less the parameters the program reads) as resident."""
    from dllm_jax.programs import memory

    for row in rows:
        if row["program"] not in ("sampler", "score"):
            continue
        for rl in (r for r in rows if r["program"] == "rl" and r["devices"] == row["devices"]
                   and r["lora_rank"] == 0):
            state = rl["params_bytes"] + rl["opt_bytes"] + rl["resident_bytes"]
            row["resident_bytes"] = round(state - row["params_bytes"], 3)
            row["total_bytes"] = round(row["peak_bytes"] + row["resident_bytes"], 3)
            row["fits"] = {k: memory.fit(row["total_bytes"] * memory.GIB, v)
                           for k, v in memory.CAPACITIES_GIB.items()}


def print_table(rows: list[dict]) -> None:
    from dllm_jax.programs import memory

    cols = ("params_bytes", "opt_bytes", "argument_bytes", "output_bytes", "alias_bytes",
            "temp_bytes", "peak_bytes", "resident_bytes", "total_bytes")
    heads = ("params", "optim", "args", "out", "alias", "temp", "peak", "resid", "total")
    fits = tuple(memory.CAPACITIES_GIB)
    print("\nGiB per device (peak = args + out - alias + temp; total = peak + resident)")
    print(f"{'program':8} {'setup':34} {'dev':>4} " + " ".join(f"{h:>6}" for h in heads)
          + "  " + " ".join(f"{f:>5}" for f in fits) + "  how")
    for r in rows:
        print(f"{r['program']:8} {r['setup']:34} {r['devices']:>4} "
              + " ".join(f"{r[c]:6.2f}" for c in cols) + "  "
              + " ".join(f"{r['fits'][f]:>5}" for f in fits) + f"  {r['how']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start_jax(args)
    import jax

    from dllm_jax.model import config as mcfg
    from dllm_jax.model import sharding as shd
    from dllm_jax.programs import memory

    config = getattr(mcfg, args.model)(dtype=args.dtype, remat=args.remat, attention_impl="xla")
    backend = f"TPU {args.tpu} topology (AOT)" if args.tpu else "simulated CPU devices"
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on "
          f"{platform.node()} ({os.cpu_count()} CPUs), JAX {jax.__version__}, {backend}\n"
          f"model {args.model}: {config.num_layers} layers, {config.num_params / 1e9:.2f}B "
          f"params, {args.dtype}, remat {args.remat}, XLA attention; AdamW moments in the "
          f"parameter dtype", flush=True)
    rows = []
    for n in args.devices:
        mesh = shd.make_mesh((1, n, 1), devices=devices_for(args, n))
        for prog, setup, rank, measure in variants(args, n):
            rep, how = measure_at_depth(args, config, mesh, measure)
            rows.append({"program": prog, "setup": setup, "lora_rank": rank, "devices": n,
                         "mesh": list(rep.mesh_shape), "how": how, **rep.row(),
                         "fits": {k: memory.fit(rep.total_bytes, v)
                                  for k, v in memory.CAPACITIES_GIB.items()}})
    with_rl_residents(rows)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "dtype": args.dtype, "remat": args.remat,
                       "backend": backend, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
