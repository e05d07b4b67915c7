"""``dllm-jax convert hf-to-orbax | orbax-to-hf``."""

from __future__ import annotations

import argparse

from dllm_jax.weights.convert import checkpoint_to_hf, hf_to_checkpoint


def add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert checkpoints between HF and dllm-jax")
    sub = p.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("hf-to-orbax", help="HF safetensors directory -> dllm-jax checkpoint")
    a.add_argument("--hf-dir", required=True, help="directory with config.json + *.safetensors")
    a.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    a.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a.add_argument("--allow-nonfinite", action="store_true",
                   help="keep tensors holding NaN or Inf (refused by default)")
    a.set_defaults(func=_convert_hf_to_orbax)
    b = sub.add_parser("orbax-to-hf", help="dllm-jax checkpoint -> HF safetensors directory")
    b.add_argument("--ckpt", required=True, help="dllm-jax checkpoint directory")
    b.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    b.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="tensor dtype in the output (default: the checkpoint's)")
    b.set_defaults(func=_convert_orbax_to_hf)


def _convert_hf_to_orbax(args: argparse.Namespace) -> int:
    out = hf_to_checkpoint(args.hf_dir, args.out, dtype=args.dtype,
                           allow_nonfinite=args.allow_nonfinite)
    print(f"wrote dllm-jax checkpoint to {out}")
    return 0


def _convert_orbax_to_hf(args: argparse.Namespace) -> int:
    out = checkpoint_to_hf(args.ckpt, args.out, dtype=args.dtype)
    print(f"wrote HF checkpoint to {out}")
    return 0
