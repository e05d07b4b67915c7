"""What a training run keeps beside its checkpoint that serving uses: the run's name and its
generation length (see docs/serving.md, "Defaults from a run").

The training programs (``dllm-jax train``, the demo) write ``<run>/config.yaml`` (the resolved
program) and the final model to ``<run>/model``. A run on a built-in task generates exactly the
task's answer, one token per step in one block (as the demo evaluates it); an RL run on files
keeps its rollout sampler's length, block and steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dllm_jax.errors import ConfigError
from dllm_jax.tasks import get_puzzle

RUN_CONFIG = "config.yaml"
EXPORT_NAME = "model"  # the programs' final checkpoint: <run>/model
GENERATION_KEYS = ("gen_length", "block_length", "steps")


def served_name(model_dir: str | Path) -> str:
    """The model id a server announces for ``model_dir``: its directory name, or the run's
    (the parent directory's) name for a programs' export ``<run>/model``."""
    path = Path(model_dir).resolve()
    if path.name == EXPORT_NAME and path.parent != path:
        return path.parent.name
    return path.name


def run_config_path(model_dir: str | Path) -> Path | None:
    """The run's ``config.yaml``: in the checkpoint directory, or beside it for an export
    ``<run>/model``; None when there is none."""
    path = Path(model_dir)
    candidates = [path / RUN_CONFIG]
    if path.resolve().name == EXPORT_NAME:
        candidates.append(path.resolve().parent / RUN_CONFIG)
    return next((c for c in candidates if c.is_file()), None)


def saved_generation(model_dir: str | Path) -> tuple[dict[str, int], str | None]:
    """``({gen_length, block_length, steps}, where)`` that the run of ``model_dir`` saved, or
    ``({}, None)`` when it saved none (a file that is not a program's config is ignored).

    Raises:
      ConfigError: ``config.yaml`` cannot be parsed, or names a task this version lacks.
    """
    path = run_config_path(model_dir)
    if path is None:
        return {}, None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the run config {path}: "
                          f"{' '.join(str(e).split())[:200]}") from None
    program = data.get("program") if isinstance(data, dict) else None
    if not isinstance(program, dict):
        return {}, None
    task = _section(program, "data").get("task")
    if task is not None and _section(program, "data").get("path") is None:
        a = get_puzzle(str(task)).answer_length
        return dict.fromkeys(GENERATION_KEYS, a), f"{path} (task {task})"
    sampler = _section(_section(program, "rl"), "sampler")
    found = {k: sampler[k] for k in GENERATION_KEYS if isinstance(sampler.get(k), int)}
    if len(found) == len(GENERATION_KEYS):
        return found, f"{path} (rl.sampler)"
    return {}, None


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}
