"""``dllm-jax demo [--task T] [--out DIR] [--quick]``: the end-to-end CPU demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from dllm_jax.programs.demo import DemoConfig, run_demo


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train, sample, analyse and RL on a built-in task")
    p.add_argument("--task", default="addition", choices=["addition", "sudoku", "countdown"])
    p.add_argument("--out", default="out/demo")
    p.add_argument("--quick", action="store_true", help="the same path in a few minutes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    cfg = (DemoConfig.quick if args.quick else DemoConfig)(task=args.task, seed=args.seed)
    out = Path(args.out)
    res = run_demo(cfg, out)
    print("\n" + (out / "report.md").read_text())
    print(f"results: {out.resolve()}")
    return 0 if res else 1

