"""RL sanity check: every RL loss of the registry, trained from scratch on the label-free
``digitsum`` task (docs/training.md, "RL sanity check"), must raise the mean rollout reward.

    python scripts/rl_sanity.py --quick --json     # what the test suite runs
    python scripts/rl_sanity.py --out out/rl_sanity

Each loss runs the RL program (``dllm_jax.programs.run_rl``) from the same freshly
initialised model with the same rollout keys; the per-step metrics (mean reward, zero-variance
groups, KL, clip fraction, update norm) come from the run's ``metrics.jsonl``. Prints, per
loss, the mean reward of the first and the last 10 RL steps, and whether the last reached
``--level``; the exit status is 1 when any loss did not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dllm_jax.objectives import loss_names
from dllm_jax.programs.sanity import SanityConfig, run_sanity


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/rl_sanity")
    ap.add_argument("--losses", default=",".join(loss_names("rl")),
                    help="comma-separated RL losses (default: every one in the registry)")
    ap.add_argument("--quick", action="store_true", help="the test suite's size")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--level", type=float, default=None, help="reward the last 10 steps must "
                    "reach (default: the config's)")
    args = ap.parse_args(argv)
    cfg = SanityConfig.quick() if args.quick else SanityConfig()
    if args.level is not None:
        cfg = SanityConfig(**{**cfg.__dict__, "level": args.level})
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    unknown = sorted(set(losses) - set(loss_names("rl")))
    if unknown:
        ap.error(f"unknown RL loss {unknown[0]!r}; choose from {loss_names('rl')}")
    t0 = time.perf_counter()
    res = run_sanity(cfg, losses, Path(args.out))
    res["seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for name, r in res["losses"].items():
            print(f"{name:>10}: reward first 10 steps {r['first10']:.3f} -> last 10 "
                  f"{r['last10']:.3f} ({'reached' if r['reached'] else 'MISSED'} {cfg.level})")
    return 0 if all(r["reached"] for r in res["losses"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
