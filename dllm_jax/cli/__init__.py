"""The ``dllm-jax`` command line: one module per command; the only place that parses arguments."""

from dllm_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
