"""The ``dllm-jax`` command: convert, generate, trajectory, eval, train, demo, serve."""

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
    ("dllm_jax.cli.serve", "add_serve_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dllm-jax",
        description="Masked diffusion language models in JAX: convert, sample, analyse, train.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module, fn in _PLUGINS:
        getattr(importlib.import_module(module), fn)(subparsers)
    return parser


def describe(e: BaseException) -> str:
    """One line for an expected failure (bad input, refused config, I/O)."""
    if isinstance(e, OSError) and e.strerror:
        where = e.filename if e.filename is not None else ""
        return f"{where}: {e.strerror}" if where else e.strerror
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first


def main(argv: list[str] | None = None) -> int:
    """Runs one command. Every expected failure (bad input, refused config, malformed file,
    I/O error such as a read-only or full disk) is one line on stderr and exit code 2;
    ``--debug`` shows the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # ConfigError, ConversionError are ValueErrors
        if args.debug:
            raise
        print(f"dllm-jax: error: {describe(e)}", file=sys.stderr)
        return 2
