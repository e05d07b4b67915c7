"""Per-device memory of an LLaDA-8B SFT train step (bf16 parameters, AdamW) on simulated meshes.

Nothing is materialised: the state is abstract (``jax.eval_shape``) and the real train step is
compiled for the mesh; XLA's memory analysis gives the bytes. Examples::

    python scripts/estimate_memory.py                       # 8 devices and 16 devices, 1 x 2048
    python scripts/estimate_memory.py --layers 1,2 --devices 8 --json out.json
    python scripts/estimate_memory.py --layers full         # compile all 32 layers (slow)

With ``--layers 1,2`` (default) it compiles 1- and 2-layer variants and extrapolates linearly
per layer to the model's depth; ``--check 4`` also compiles a 4-layer variant to show how well
the line predicts it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llada_8b", choices=("llada_8b", "dream_7b"))
    ap.add_argument("--devices", default="8,16",
                    help="comma-separated device counts; each is an all-FSDP mesh (1, n, 1)")
    ap.add_argument("--micro-batch", type=int, default=1, help="rows per device per micro-batch")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--remat", default="full", choices=("none", "full", "dots"))
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--lora-rank", type=int, default=0,
                    help="train rank-r LoRA adapters on all projections instead (0 = full)")
    ap.add_argument("--layers", default="1,2",
                    help="'full' to compile every layer, or two layer counts to extrapolate from")
    ap.add_argument("--check", type=int, default=0,
                    help="also compile this many layers and compare with the extrapolation")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    counts = [int(x) for x in args.devices.split(",")]
    if args.layers != "full":
        layer_pair = [int(x) for x in args.layers.split(",")]
        if len(layer_pair) != 2 or layer_pair[0] == layer_pair[1]:
            ap.error("--layers needs 'full' or two different layer counts, e.g. 1,2")
    # Must happen before JAX initialises its backends.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={max(counts)}"

    import jax

    from dllm_jax.model import config as mcfg
    from dllm_jax.model import sharding as shd
    from dllm_jax.train import memory
    from dllm_jax.train.lora import LoRAConfig

    if len(jax.devices()) < max(counts):
        print(f"error: need {max(counts)} devices, JAX sees {len(jax.devices())}",
              file=sys.stderr)
        return 2
    config = getattr(mcfg, args.model)(dtype=args.dtype, remat=args.remat, attention_impl="xla")
    print(f"model {args.model}: {config.num_layers} layers, {config.num_params / 1e9:.2f}B "
          f"params, dtype {args.dtype}, remat {args.remat}; AdamW moments in the parameter "
          f"dtype; micro-batch {args.micro_batch} x {args.seq_len} per device, "
          f"grad_accum {args.grad_accum}"
          + (f"; LoRA rank {args.lora_rank}" if args.lora_rank else "; full fine-tuning"),
          flush=True)
    lora_config = LoRAConfig(rank=args.lora_rank, alpha=2.0 * max(args.lora_rank, 1))
    results = []
    for n in counts:
        mesh = shd.make_mesh((1, n, 1), devices=jax.devices()[:n])
        gb = args.micro_batch * n * args.grad_accum

        def run(layers: int, mesh=mesh, gb=gb) -> memory.MemoryReport:
            return memory.measure(config.replace(num_layers=layers), mesh, global_batch=gb,
                                  seq_len=args.seq_len, grad_accum=args.grad_accum,
                                  lora_config=lora_config,
                                  log=lambda s: print(s, flush=True))

        if args.layers == "full":
            rep, how = run(config.num_layers), "compiled"
        else:
            a, b = run(layer_pair[0]), run(layer_pair[1])
            rep, how = memory.extrapolate(a, b, config.num_layers), (
                f"extrapolated from {layer_pair[0]} and {layer_pair[1]} layers")
            if args.check:
                c = run(args.check)
                pred = memory.extrapolate(a, b, args.check)
                print(f"  check at {args.check} layers: measured peak "
                      f"{c.peak_bytes / memory.GIB:.3f} GiB, line predicts "
                      f"{pred.peak_bytes / memory.GIB:.3f} GiB", flush=True)
        row = {"devices": n, "mesh": [1, n, 1], "how": how, "num_layers": rep.num_layers,
               "global_batch": gb, "seq_len": args.seq_len, **rep.row()}
        results.append(row)
        print(f"{n} devices ({how}): per device params {row['params_bytes']} GiB, optimiser "
              f"{row['opt_bytes']} GiB, arguments {row['argument_bytes']} GiB, temporaries "
              f"{row['temp_bytes']} GiB, peak {row['peak_bytes']} GiB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "dtype": args.dtype, "remat": args.remat,
                       "lora_rank": args.lora_rank,
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
