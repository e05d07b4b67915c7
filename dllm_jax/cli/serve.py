"""``dllm-jax serve``: the OpenAI-compatible HTTP server (docs/serving.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dllm_jax.cli.generate import add_sampler_arguments, sampler_config_from_args
from dllm_jax.errors import ConfigError
from dllm_jax.serve import Engine, create_app, run_server
from dllm_jax.serve.settings import saved_generation

# The flags that set the generation geometry; with none of them, a run's saved one is used.
GEOMETRY_FLAGS = ("gen_length", "max_new_tokens", "block_length", "steps")


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP server with dynamic batching and streamed blocks")
    p.add_argument("--model", required=True, help="HF or dllm-jax checkpoint directory")
    p.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    p.add_argument("--model-name", help="the model id clients send (default: the directory "
                                         "name; the run's name for a run's <run>/model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests queued or decoding at once; more get HTTP 429")
    p.add_argument("--batch-sizes", default="1,4,16",
                   help="batch sizes to compile; a batch is padded to the next one")
    p.add_argument("--prompt-buckets",
                   help="prompt widths to compile (default: 32, 64, ... up to the model's "
                        "max_position_embeddings)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long the oldest queued request waits for others to batch with")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds before an unanswered request gets HTTP 504; its batch is "
                        "dropped at the next block once none of its clients is left")
    p.add_argument("--max-steps", type=int,
                   help="the most denoising steps a request may ask for (default: its "
                        "generation length, one token per step)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="a larger request body gets HTTP 413 before it is parsed")
    p.add_argument("--shutdown-timeout", type=float, default=5.0,
                   help="seconds from SIGTERM/SIGINT to exit: requests in flight finish or "
                        "get HTTP 503, then the process exits 0")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    add_sampler_arguments(p)
    p.set_defaults(func=_serve)


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must look like 1,4,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} needs positive integers, got {text!r}")
    return values


def _check_limits(args: argparse.Namespace) -> None:
    if args.sampler == "imh":
        raise ConfigError("serve supports --sampler llada and dream")
    if args.max_queue < 1 or args.request_timeout <= 0 or args.batch_wait_ms < 0:
        raise ConfigError("--max-queue must be >= 1, --request-timeout > 0 and "
                          "--batch-wait-ms >= 0")
    if (args.max_steps is not None and args.max_steps < 1) or args.max_body_bytes < 1 \
            or args.shutdown_timeout <= 0:
        raise ConfigError("--max-steps and --max-body-bytes must be >= 1 and "
                          "--shutdown-timeout > 0")


def _run_defaults(args: argparse.Namespace) -> None:
    """Without any geometry flag, the generation length, block and steps the checkpoint's run
    saved (its task, or its RL sampler) become the server's defaults."""
    if not os.path.isdir(args.model):
        raise ConfigError(f"--model {args.model} is not a directory")
    if any(getattr(args, k, None) is not None for k in GEOMETRY_FLAGS):
        return
    saved, where = saved_generation(args.model)
    if not saved:
        return
    length = "max_new_tokens" if args.sampler == "dream" else "gen_length"
    args.steps, args.block_length = saved["steps"], saved["block_length"]
    setattr(args, length, saved["gen_length"])
    print(f"serve: defaults from {where}: {length} {saved['gen_length']}, block_length "
          f"{saved['block_length']}, steps {saved['steps']}", file=sys.stderr, flush=True)


def _log_to_stderr(level: str) -> None:
    """The server's own lines (dropped batches, shutdown) beside uvicorn's."""
    logger = logging.getLogger("dllm_jax.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())


def _serve(args: argparse.Namespace) -> int:
    _check_limits(args)
    _log_to_stderr(args.log_level)
    _run_defaults(args)
    defaults = sampler_config_from_args(args, args.model)
    batch_sizes = _ints(args.batch_sizes, "--batch-sizes")
    buckets = _ints(args.prompt_buckets, "--prompt-buckets")
    engine = Engine.load(args.model, defaults=defaults, name=args.model_name,
                         tokenizer_dir=args.tokenizer, dtype=args.dtype,
                         prompt_buckets=buckets, batch_sizes=batch_sizes,
                         max_steps=args.max_steps)
    app = create_app(engine, max_queue=args.max_queue, batch_wait_s=args.batch_wait_ms / 1000,
                     request_timeout_s=args.request_timeout, max_body_bytes=args.max_body_bytes)
    if not run_server(app, args.host, args.port, log_level=args.log_level,
                      shutdown_timeout_s=args.shutdown_timeout):
        # the worker is still inside a compile or one long block: leave without waiting
        print("serve: the worker was still busy at the end of the shutdown timeout; exiting",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)
    return 0
