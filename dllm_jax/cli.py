"""The ``dllm-jax`` command: convert, generate, trajectory, eval, train, demo."""

from __future__ import annotations

import argparse
import importlib
import sys


def _add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert checkpoints between HF and dllm-jax")
    sub = p.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("hf-to-orbax", help="HF safetensors directory -> dllm-jax checkpoint")
    a.add_argument("--hf-dir", required=True, help="directory with config.json + *.safetensors")
    a.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    a.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a.set_defaults(func=_convert_hf_to_orbax)
    b = sub.add_parser("orbax-to-hf", help="dllm-jax checkpoint -> HF safetensors directory")
    b.add_argument("--ckpt", required=True, help="dllm-jax checkpoint directory")
    b.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    b.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="tensor dtype in the output (default: the checkpoint's)")
    b.set_defaults(func=_convert_orbax_to_hf)


def _convert_hf_to_orbax(args: argparse.Namespace) -> int:
    from dllm_jax.convert import hf_to_checkpoint

    out = hf_to_checkpoint(args.hf_dir, args.out, dtype=args.dtype)
    print(f"wrote dllm-jax checkpoint to {out}")
    return 0


def _convert_orbax_to_hf(args: argparse.Namespace) -> int:
    from dllm_jax.convert import checkpoint_to_hf

    out = checkpoint_to_hf(args.ckpt, args.out, dtype=args.dtype)
    print(f"wrote HF checkpoint to {out}")
    return 0


# (module, function) pairs that register further subcommands; each owns its parser.
_PLUGINS = [
    ("dllm_jax.sampling.cli", "add_generate_parser"),
    ("dllm_jax.sampling.cli", "add_trajectory_parser"),
    ("dllm_jax.eval.cli", "add_eval_parser"),
    ("dllm_jax.pipeline", "add_train_parser"),
    ("dllm_jax.demo", "add_demo_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dllm-jax",
        description="Masked diffusion language models in JAX: convert, sample, analyse, train.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_convert_parser(subparsers)
    for module, fn in _PLUGINS:
        getattr(importlib.import_module(module), fn)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from dllm_jax.config import ConfigError
    from dllm_jax.convert import ConversionError

    try:
        return int(args.func(args) or 0)
    except (ConversionError, ConfigError, ValueError, FileNotFoundError) as e:
        # Bad input is reported as one line; anything else is a bug and keeps its traceback.
        print(f"dllm-jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
