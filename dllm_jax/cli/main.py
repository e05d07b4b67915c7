"""The ``dllm-jax`` command: convert, generate, trajectory, eval, train, demo."""

from __future__ import annotations

import argparse
import importlib
import sys


# (module, function) pairs that register further subcommands; each owns its parser.
_PLUGINS = [
    ("dllm_jax.cli.convert", "add_convert_parser"),
    ("dllm_jax.cli.generate", "add_generate_parser"),
    ("dllm_jax.cli.generate", "add_trajectory_parser"),
    ("dllm_jax.cli.eval", "add_eval_parser"),
    ("dllm_jax.cli.train", "add_train_parser"),
    ("dllm_jax.cli.demo", "add_demo_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dllm-jax",
        description="Masked diffusion language models in JAX: convert, sample, analyse, train.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module, fn in _PLUGINS:
        getattr(importlib.import_module(module), fn)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from dllm_jax.errors import ConfigError
    from dllm_jax.errors import ConversionError

    try:
        return int(args.func(args) or 0)
    except (ConversionError, ConfigError, ValueError, FileNotFoundError) as e:
        # Bad input is reported as one line; anything else is a bug and keeps its traceback.
        print(f"dllm-jax: error: {e}", file=sys.stderr)
        return 2
