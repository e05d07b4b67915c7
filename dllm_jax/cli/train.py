"""``dllm-jax train sft|rl --config X.yaml [--set a.b=v] [--resume | --overwrite]``."""

from __future__ import annotations

import argparse

from dllm_jax.model.sharding import maybe_initialize_distributed
from dllm_jax.programs.config import RLProgram, SFTProgram
from dllm_jax.programs.run import run_rl, run_sft
from dllm_jax.train.overrides import format_config, load_config


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="SFT or RL training from a YAML config")
    sub = p.add_subparsers(dest="program", required=True)
    for name in ("sft", "rl"):
        q = sub.add_parser(name, help=f"{name.upper()} training")
        q.add_argument("--config", help="YAML overrides of the program's fields")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one field, e.g. train.optim.lr=1e-5 (repeatable)")
        run_dir = q.add_mutually_exclusive_group()
        run_dir.add_argument("--resume", action="store_true",
                             help="continue from the newest complete checkpoint in the output dir")
        run_dir.add_argument("--overwrite", action="store_true",
                             help="replace a previous run in the output dir (refused otherwise)")
        q.add_argument("--print-config", action="store_true",
                       help="print the resolved config and exit")
        q.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    maybe_initialize_distributed()  # no-op unless a multi-host launcher's environment says so
    cls = SFTProgram if args.program == "sft" else RLProgram
    # Resolved: every loss knob left unset shows the chosen loss's published default.
    prog = load_config(cls, args.config, args.set).resolved()
    print(format_config(prog), flush=True)
    if args.print_config:
        return 0
    out = (run_sft if args.program == "sft" else run_rl)(prog, resume=args.resume,
                                                         overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
