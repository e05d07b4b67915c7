"""The ``dllm-jax`` command: convert, generate, trajectory, eval, train, demo, serve.

Each command's module is imported only when that command runs (``--help`` lists them all from
:data:`COMMANDS` without importing any), so a dependency one command needs never stops another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable

# name -> (module, function that registers the command's parser, the one line ``--help`` shows;
# the function registers the command with the same line).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "convert": ("dllm_jax.cli.convert", "add_convert_parser",
                "convert checkpoints between HF and dllm-jax"),
    "generate": ("dllm_jax.cli.generate", "add_generate_parser",
                 "sample completions with a diffusion LM"),
    "trajectory": ("dllm_jax.cli.generate", "add_trajectory_parser",
                   "record a denoising trajectory and plot it"),
    "eval": ("dllm_jax.cli.eval", "add_eval_parser",
             "evaluate a model on benchmarks (or score a predictions file)"),
    "train": ("dllm_jax.cli.train", "add_train_parser", "SFT or RL training from a YAML config"),
    "demo": ("dllm_jax.cli.demo", "add_demo_parser",
             "train, sample, analyse and RL on a built-in task"),
    "serve": ("dllm_jax.cli.serve", "add_serve_parser",
              "OpenAI-compatible HTTP server with dynamic batching and streamed blocks"),
}


class MissingDependency(Exception):
    """A command's module needs a package that is not installed."""


def _register(subparsers: argparse._SubParsersAction, name: str) -> None:
    module, fn, _ = COMMANDS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "dllm_jax":
            raise
        raise MissingDependency(
            f"`dllm-jax {name}` needs the Python module {e.name.split('.')[0]!r}, which is not "
            f"installed; reinstall dllm-jax with its dependencies (pip install .)") from e
    getattr(mod, fn)(subparsers)


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. ``load``: the commands whose full parsers are built (their modules
    imported); every other command is listed with its help line only. None: all of them."""
    parser = argparse.ArgumentParser(
        prog="dllm-jax",
        description="Masked diffusion language models in JAX: convert, sample, analyse, train.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    load = set(COMMANDS if load is None else load)
    for name, (_, _, help_line) in COMMANDS.items():
        if name in load:
            _register(subparsers, name)
        else:
            subparsers.add_parser(name, help=help_line)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command named in ``argv``: the first item that is not an option (the top-level
    options take no values)."""
    for item in argv:
        if item == "--":
            return None
        if not item.startswith("-"):
            return item
    return None


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
    I/O error such as a read-only or full disk, a missing dependency) is one line on stderr and
    exit code 2; ``--debug`` shows the traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    try:
        parser = build_parser([command] if command in COMMANDS else [])
    except MissingDependency as e:
        if "--debug" in argv:
            raise
        print(f"dllm-jax: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # ConfigError, ConversionError are ValueErrors
        if args.debug:
            raise
        print(f"dllm-jax: error: {describe(e)}", file=sys.stderr)
        return 2
