"""``dllm-jax serve``: the OpenAI-compatible HTTP server (docs/serving.md)."""

from __future__ import annotations

import argparse

from dllm_jax.cli.generate import add_sampler_arguments, sampler_config_from_args
from dllm_jax.errors import ConfigError
from dllm_jax.serve import Engine, create_app, run_server


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP server with dynamic batching and streamed blocks")
    p.add_argument("--model", required=True, help="HF or dllm-jax checkpoint directory")
    p.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    p.add_argument("--model-name", help="the model id clients send (default: the directory name)")
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
                   help="seconds before an unanswered request gets HTTP 504")
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


def _serve(args: argparse.Namespace) -> int:
    if args.sampler == "imh":
        raise ConfigError("serve supports --sampler llada and dream")
    if args.max_queue < 1 or args.request_timeout <= 0 or args.batch_wait_ms < 0:
        raise ConfigError("--max-queue must be >= 1, --request-timeout > 0 and "
                          "--batch-wait-ms >= 0")
    defaults = sampler_config_from_args(args, args.model)
    batch_sizes = _ints(args.batch_sizes, "--batch-sizes")
    buckets = _ints(args.prompt_buckets, "--prompt-buckets")
    engine = Engine.load(args.model, defaults=defaults, name=args.model_name,
                         tokenizer_dir=args.tokenizer, dtype=args.dtype,
                         prompt_buckets=buckets, batch_sizes=batch_sizes)
    app = create_app(engine, max_queue=args.max_queue, batch_wait_s=args.batch_wait_ms / 1000,
                     request_timeout_s=args.request_timeout)
    run_server(app, args.host, args.port, log_level=args.log_level)
    return 0
