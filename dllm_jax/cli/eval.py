"""``dllm-jax eval`` (generate and score) and ``dllm-jax eval score`` (score a predictions file).

``eval`` takes the run flags itself and has optional sub-commands, ``score`` and ``lm-eval``,
so ``dllm-jax eval --model DIR --tasks gsm8k ...``, ``dllm-jax eval score --task gsm8k ...``
and ``dllm-jax eval lm-eval --model dllm_jax --model_args pretrained=DIR --tasks ...`` (every
flag is lm-eval's own, see docs/eval.md) parse as written.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from dllm_jax.cli.generate import add_sampler_arguments, sampler_config_from_args
from dllm_jax.errors import ConfigError
from dllm_jax.eval import harness
from dllm_jax.eval.sandbox import SandboxConfig
from dllm_jax.integrations import LM_EVAL_HINT, lm_eval_missing
from dllm_jax.tasks import TASKS, get_task, parse_task_list

_BENCHMARKS = [name for name, task in TASKS.items() if task.data is not None]


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``eval`` (and ``eval score``) on the main CLI's sub-parsers."""
    p = subparsers.add_parser(
        "eval", help="evaluate a model on benchmarks (or score a predictions file)",
        description=f"Generate with a model and score ({', '.join(_BENCHMARKS)}); "
                    "`eval score` scores a file instead.")
    p.add_argument("--model", help="checkpoint directory (model + tokenizer)")
    p.add_argument("--tasks", help="comma-separated task names, e.g. gsm8k,math500")
    p.add_argument("--limit", type=int, help="first N items of each task")
    p.add_argument("--samples", type=int, default=1, help="completions per item (n of pass@k)")
    p.add_argument("--out", help="output directory (results.jsonl per task, summary.*)")
    p.add_argument("--data-dir", help="directory with the benchmark files (default: HF hub)")
    p.add_argument("--batch-size", type=int, help="prompts per generate call (default: n)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--workers", type=int, default=2, help="code sandbox processes at once")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds per code program, and per answer check of other tasks")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--unsafe-no-isolation", action="store_true",
                   help="run model-written code WITHOUT OS isolation when bubblewrap (bwrap) is "
                        "unavailable: resource limits only, no namespaces (see docs/safety.md)")
    add_sampler_arguments(p)
    p.set_defaults(func=_run)

    sub = p.add_subparsers(dest="eval_command", metavar="{score,lm-eval}",
                           help="optional: score a predictions file instead of running a model")
    s = sub.add_parser("score", help="score a predictions JSONL file (no model)")
    s.add_argument("--task", required=True, help="task name, e.g. gsm8k")
    s.add_argument("--data", help="dataset file, directory or HF name (default: HF hub)")
    s.add_argument("--predictions", required=True,
                   help='JSONL of {"id", "completion"}; an id is the item\'s index or task_id, '
                        "or the data set's own id (e.g. MATH500's unique_id)")
    s.add_argument("--out", metavar="FILE",
                   help="also write one JSON line per prediction to this file "
                        '({"id", "line", "score", "answer", "error"})')
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.add_argument("--workers", type=int, default=2, help="code sandbox processes at once")
    s.add_argument("--timeout", type=float, default=10.0,
                   help="seconds per code program, and per answer check of other tasks")
    s.add_argument("--unsafe-no-isolation", action="store_true",
                   help="run model-written code WITHOUT OS isolation when bubblewrap (bwrap) is "
                        "unavailable: resource limits only, no namespaces (see docs/safety.md)")
    s.set_defaults(func=_score)
    # lm-eval parses its own flags: this parser knows no options ("\0" prefixes none), so
    # everything after `lm-eval`, --help included, reaches lm-eval's command line as written.
    e = sub.add_parser("lm-eval", prefix_chars="\0", add_help=False,
                       help="run lm-evaluation-harness tasks (its own flags; --model dllm_jax)")
    e.add_argument("lm_eval_args", nargs=argparse.REMAINDER)
    e.set_defaults(func=_lm_eval)


def _lm_eval(args: argparse.Namespace) -> int:
    if lm_eval_missing():
        raise ConfigError(LM_EVAL_HINT)
    from dllm_jax.integrations.lm_eval import main as lm_eval_main

    return lm_eval_main(args.lm_eval_args)


def _sandbox_config(args: argparse.Namespace) -> SandboxConfig:
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    return SandboxConfig(timeout_s=args.timeout, allow_unsafe=args.unsafe_no_isolation)


def _score(args: argparse.Namespace) -> int:
    task = get_task(args.task)
    if not Path(args.predictions).is_file():
        raise FileNotFoundError(f"--predictions {args.predictions} does not exist")
    if args.out is not None and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a directory; give a file name")
    res = harness.score_predictions(task, args.data, args.predictions, workers=args.workers,
                                    sandbox_config=_sandbox_config(args),
                                    time_limit_s=args.timeout, out=args.out)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['task']}: {res['num_problems']} problems, n={res['num_samples']}")
    for k, v in res.items():
        if k.startswith("pass@") and not k.endswith("_stderr"):
            print(f"  {k}: {100 * v:.2f}% ± {100 * res[k + '_stderr']:.2f}")
    return 0


def _run(args: argparse.Namespace) -> int:
    for flag in ("model", "tasks", "out"):
        if getattr(args, flag) is None:
            raise ConfigError(f"eval needs --{flag} (or use `dllm-jax eval score ...`)")
    tasks = parse_task_list(args.tasks)
    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    if not Path(args.model).is_dir():
        raise ConfigError(f"--model {args.model} is not a directory")
    config = sampler_config_from_args(args, args.model)
    summaries = harness.run_eval(args.model, tasks, args.limit, args.samples, config, args.out,
                                 args.seed, data_dir=args.data_dir,
                                 batch_size=args.batch_size, workers=args.workers,
                                 sandbox_config=_sandbox_config(args),
                                 time_limit_s=args.timeout, dtype=args.dtype,
                                 progress=not args.no_progress)
    for name, s in summaries.items():
        print(f"{name}: pass@1 {100 * s['pass@1']:.2f}% ± {100 * s['pass@1_stderr']:.2f} "
              f"({s['num_problems']} problems, n={s['num_samples']})")
    print(f"wrote {Path(args.out) / 'summary.md'}")
    return 0
