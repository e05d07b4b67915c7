"""The RL study on a leak-free split (``dllm_jax.studies.rl``, docs/studies.md): SFT on a fixed
labelled set to its validation plateau, then RL arms on unlabelled prompts against SFT
continued for the same compute, over SFT seeds x RL seeds, with paired statistics.

    python scripts/study_rl.py --out out/study_rl              # the full design (hours on a CPU)
    python scripts/study_rl.py --out out/study_rl --max-runs 4  # ... a few runs per invocation
    python scripts/study_rl.py --quick --out out/study_quick   # toy size, same files
    python scripts/study_rl.py --task countdown --out studies/countdown  # records kept in git

Every finished run is cached under ``--out``, so each invocation continues the study (its JSON
records alone suffice: a start whose checkpoint is gone is retrained and checked); the
summary (``results.json``, ``report.md``, ``rl_study.png``) is rebuilt from what finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import jax

from dllm_jax.errors import ConfigError
from dllm_jax.studies import rl_report
from dllm_jax.studies.rl import ARMS, TASK_DEFAULTS, Design, design_for, run_study

QUICK = Design(sft_seeds=(0,), rl_seeds=(0, 1), hidden_size=32, num_layers=1, labelled=50,
               unlabelled=100, sft_batch=16, sft_check_every=10, sft_patience=1,
               sft_max_steps=30, lr_grid=(1e-4,), grid_steps=2, rl_steps=4, rl_prompts=2,
               rl_group=4, rl_check_every=2, num_val=16, num_test=32, boot=200)


def log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/study_rl")
    ap.add_argument("--quick", action="store_true", help="toy size (seconds per run)")
    ap.add_argument("--task", default="sudoku", choices=sorted(TASK_DEFAULTS),
                    help="the task and its study defaults (docs/studies.md)")
    ap.add_argument("--arms", help=f"comma-separated, in run order (from {list(ARMS)})")
    ap.add_argument("--sft-seeds", help="comma-separated SFT seeds")
    ap.add_argument("--rl-seeds", help="comma-separated RL seeds")
    ap.add_argument("--max-runs", type=int, help="stop after this many new runs")
    args = ap.parse_args(argv)
    design = dataclasses.replace(QUICK, task=args.task) if args.quick else design_for(args.task)
    grow = {k: tuple(v.split(",")) if k == "arms" else tuple(int(x) for x in v.split(","))
            for k, v in (("arms", args.arms), ("sft_seeds", args.sft_seeds),
                         ("rl_seeds", args.rl_seeds)) if v}
    design = dataclasses.replace(design, **grow)
    out = Path(args.out)
    # Every run rebuilds its jitted steps; a persistent cache shares the compiled programs.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    t0 = time.perf_counter()
    try:
        res = run_study(design, out, log=log, max_runs=args.max_runs)
    except ConfigError as e:
        raise SystemExit(f"study_rl: {e}") from None
    summary = rl_report.summarize(res)
    header = (f"# RL study: {design.task}\n\n{time.strftime('%Y-%m-%d')}; {platform.machine()}, "
              f"Python {platform.python_version()}, jax {jax.__version__}; "
              f"`{' '.join(['python', *sys.argv])}`; {time.perf_counter() - t0:.0f} s in this "
              "invocation (cached runs are not re-timed).")
    (out / "results.json").write_text(json.dumps({**res, "summary": summary}, indent=1))
    (out / "report.md").write_text(rl_report.report(res, summary, header))
    rl_report.plot(res, out / "rl_study.png")
    log(f"wrote {out / 'report.md'}; target: {summary['target']}")


if __name__ == "__main__":
    main()
