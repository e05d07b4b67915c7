"""The confusion-zone and IMH-at-equal-forward-passes analyses of a trained SFT model on a
built-in task's test split (``dllm_jax.studies.sft_analyses``, docs/studies.md).

    python scripts/study_sft_analyses.py --model out/study_rl/sft_s0/best --out out/analyses
    python scripts/study_sft_analyses.py --model out/run/model --task sudoku --seed 0
    python scripts/study_sft_analyses.py --quick --out out/analyses_quick  # trains a toy model

Writes ``OUT/results.json``, ``OUT/report.md`` and ``OUT/study_imh.png``. ``--quick`` runs
the analyses at toy size (and, without ``--model``, on a d=32 one-layer model trained for a
few hundred steps, saved under ``OUT/sft``).
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

from dllm_jax.errors import ConfigError, ConversionError
from dllm_jax.programs.datasources import TaskSource
from dllm_jax.studies import sft_analyses as sa
from dllm_jax.tasks import get_puzzle
from dllm_jax.weights.checkpoint import check_model_dir
from dllm_jax.weights.convert import from_pretrained


def log(msg: str) -> None:
    print(f"[analyses {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a trained model directory (e.g. <run>/model)")
    ap.add_argument("--task", default="sudoku", help="the built-in task (default sudoku)")
    ap.add_argument("--out", default="out/sft_analyses")
    ap.add_argument("--quick", action="store_true", help="toy sizes (seconds)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        get_puzzle(args.task)
        if args.model:
            check_model_dir(args.model)
    except (ConfigError, ConversionError) as e:
        raise SystemExit(f"study_sft_analyses: {e}") from None
    if not args.model and not args.quick:
        raise SystemExit("study_sft_analyses: --model DIR is required (or --quick, which "
                         "trains a toy model first)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    size, out = (sa.QUICK if args.quick else sa.AnalysisSize()), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"task": args.task, "model": args.model, "seed": args.seed,
              "size": dataclasses.asdict(size)}
    log(f"config: {config}")
    if not jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR wins
        jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))
    t0 = time.perf_counter()
    model_dir = args.model
    if model_dir is None:
        log("no --model: training a toy SFT model")
        model_dir = str(sa.quick_sft_model(args.task, out / "sft", args.seed))
    model = from_pretrained(model_dir)
    log(f"zones: greedy trajectories of {size.num_test} test puzzles")
    traj = sa.trajectories(model, TaskSource(args.task, 0, size.num_test, split="test"),
                           args.seed)
    zones = sa.zone_study(**traj, size=size, seed=args.seed)
    log(f"IMH: {size.imh_prompts} test prompts, K = {size.imh_candidates}")
    imh = sa.imh_study(model, args.task, size, args.seed)
    sa.plot_imh(imh, out / "study_imh.png")
    res = {**config, "model": model_dir, "command": " ".join(["python", *sys.argv]),
           "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, Python {platform.python_version()}, jax "
           f"{jax.__version__}, {jax.devices()[0].platform}",
           "wall_seconds": time.perf_counter() - t0, "zones": zones, "imh": imh,
           "plots": ["study_imh.png"]}
    (out / "results.json").write_text(json.dumps(sa.finite(res), indent=1, allow_nan=False))
    header = (f"# SFT analyses: {args.task}\n\nModel `{model_dir}`; {res['date']}; "
              f"{res['machine']}; `{res['command']}`; {res['wall_seconds']:.0f} s.\n\n")
    (out / "report.md").write_text(header + sa.report_sections(zones, imh, f"`{model_dir}`")
                                   + "\n![IMH at equal forward passes](study_imh.png)\n")
    log(f"wrote {out / 'results.json'} and {out / 'report.md'}")


if __name__ == "__main__":
    main()
