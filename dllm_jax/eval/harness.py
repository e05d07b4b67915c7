"""Evaluation: pass@k scoring of prediction files (:func:`score_predictions`) and the
resumable generate-then-score loop (:func:`run_eval`) over any task of
:data:`dllm_jax.tasks.TASKS`; code runs in :mod:`dllm_jax.eval.sandbox`."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import jax
import numpy as np
from tqdm.auto import tqdm

from dllm_jax.data.batching import left_pad
from dllm_jax.data.tokenizer import load_tokenizer, special_id
from dllm_jax.errors import ConfigError
from dllm_jax.eval.metrics import default_ks, mean_and_stderr, pass_at_k
from dllm_jax.eval.sandbox import SandboxConfig, run_programs
from dllm_jax.sampling import generate
from dllm_jax.tasks.base import ITEM_TIME_LIMIT_S, Grade, Item, RunPrograms, Task
from dllm_jax.tasks.registry import get_task, parse_task_list
from dllm_jax.weights.convert import from_pretrained

# generate_fn(prompt_ids, key) -> completion token ids, one list per prompt row.
GenerateFn = Callable[[list[list[int]], Any], list[list[int]]]
# sample(task, item, index) -> the item's completions (see _sample_item).
SampleFn = Callable[[Task, Item, int], list[str]]


def _as_task(task: str | Task) -> Task:
    return get_task(task) if isinstance(task, str) else task


def program_runner(sandbox_config: SandboxConfig | None = None, workers: int = 2) -> RunPrograms:
    """Runs programs in the sandbox, ``workers`` at once; True where a program passed."""

    def run(programs: Sequence[str]) -> list[bool]:
        return [r.passed for r in run_programs(programs, config=sandbox_config, workers=workers)]

    return run


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One line of a predictions file: its ``line`` number, its ``id`` as written (a string or
    an integer) and its ``completion``."""

    line: int
    id: str | int
    completion: str


def read_predictions(path: str | os.PathLike[str]) -> list[Prediction]:
    """``{"id", "completion"}`` JSONL -> predictions in file order.

    Raises:
      FileNotFoundError: no such file.
      ConfigError: a line that is not such an object (the id a string or an integer), or an
        empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    out: list[Prediction] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not JSON: {e}") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("completion"), str):
                raise ConfigError(f"{path}:{lineno}: expected {{\"id\", \"completion\": str}}")
            key = rec.get("id")
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise ConfigError(f"{path}:{lineno}: \"id\" must be a string or an integer, "
                                  f"got {json.dumps(key)}")
            out.append(Prediction(line=lineno, id=key, completion=rec["completion"]))
    if not out:
        raise ConfigError(f"{path}: no predictions")
    return out


def items_by_key(items: Sequence[Item]) -> dict[str, Item]:
    """The items under every name a prediction may give them: ``str(id)`` and, where the data
    set names its records, ``str(source_id)`` (MATH500's ``unique_id``, AIME's ``id``).

    A name that two different items answer to is left out (a prediction using it is refused).
    """
    named: dict[str, Item] = {}
    clashes: set[str] = set()
    for item in items:
        for key in {str(item["id"]), str(item.get("source_id", item["id"]))}:
            if key in named and named[key] is not item:
                clashes.add(key)
            named.setdefault(key, item)
    return {k: v for k, v in named.items() if k not in clashes}


def summarize(task_name: str, correct: dict[str, Sequence[bool]],
              ks: Sequence[int] | None = None) -> dict[str, Any]:
    """pass@k (mean over problems, standard error across problems) from per-sample results.

    Args:
      task_name: reported as ``task``.
      correct: per problem id, one bool per sample (problems may have different counts).
      ks: default ``1, 2, 4, ...`` up to the smallest sample count ``n``.

    Returns:
      ``{"task", "num_problems", "num_samples" (smallest n), "num_completions", "pass@k",
      "pass@k_stderr", ...}``.
    """
    if not correct:
        raise ConfigError(f"{task_name}: nothing to summarise")
    n_P = np.array([len(v) for v in correct.values()])
    c_P = np.array([int(sum(bool(x) for x in v)) for v in correct.values()])
    if n_P.min() < 1:
        raise ConfigError(f"{task_name}: a problem has no samples")
    n_min = int(n_P.min())
    ks = list(ks) if ks is not None else default_ks(n_min)
    bad = [k for k in ks if not 1 <= k <= n_min]
    if bad:
        raise ConfigError(f"{task_name}: k={bad[0]} is outside 1..{n_min} (samples per problem)")
    res: dict[str, Any] = {"task": task_name, "num_problems": len(correct),
                           "num_samples": n_min, "num_completions": int(n_P.sum())}
    for k in ks:
        per_P = [pass_at_k(int(n), int(c), k) for n, c in zip(n_P, c_P, strict=True)]
        m, se = mean_and_stderr(per_P)
        res[f"pass@{k}"] = m
        res[f"pass@{k}_stderr"] = se
    return res


def score_predictions(task: str | Task, data_path: str | os.PathLike[str] | None,
                      predictions_jsonl: str | os.PathLike[str], *,
                      ks: Sequence[int] | None = None, workers: int = 2,
                      sandbox_config: SandboxConfig | None = None,
                      time_limit_s: float | None = ITEM_TIME_LIMIT_S,
                      out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Scores a predictions file against a dataset (no model needed).

    Args:
      task: task name or :class:`Task`.
      data_path: dataset file / directory / HF name (None: the task's HF default).
      predictions_jsonl: ``{"id", "completion"}`` lines, several per id for pass@k; an id is
        the item's ``id`` (its index, or its ``task_id``) or the data set's own id of the
        record (e.g. MATH500's ``unique_id``).
      ks: the k's to report (default powers of two up to the samples per problem).
      workers: sandbox processes at once for code tasks.
      sandbox_config: sandbox limits for code tasks.
      time_limit_s: wall-clock limit for scoring one non-code completion (see
        :meth:`~dllm_jax.tasks.base.Task.grade_many`).
      out: if given, this file gets one JSON line per prediction, in file order:
        ``{"id" (as written), "line", "score" (1.0 solved, else 0.0), "answer" (the extracted
        answer, null if none), "error" (null if none)}``.

    Returns:
      :func:`summarize`'s dict over the problems that have predictions.

    Raises:
      ConfigError: unknown task, malformed predictions, or ids not in the dataset.
    """
    t = _as_task(task)
    preds = read_predictions(predictions_jsonl)
    items = items_by_key(t.load(data_path))
    unknown = [p.id for p in preds if str(p.id) not in items]
    if unknown:
        raise ConfigError(f"{len(unknown)} prediction id(s) not in the {t.name} data (or "
                          f"naming two of its items), e.g. {unknown[0]!r}")
    pairs = [(items[str(p.id)], p.completion) for p in preds]
    grades = t.grade_many(pairs, program_runner(sandbox_config, workers), time_limit_s)
    if out is not None:
        _write_lines(Path(out), [{"id": p.id, "line": p.line, "score": float(g.solved),
                                  "answer": g.answer, "error": g.error}
                                 for p, g in zip(preds, grades, strict=True)])
    correct: dict[str, list[bool]] = {}
    for (item, _), g in zip(pairs, grades, strict=True):
        correct.setdefault(str(item["id"]), []).append(g.solved)
    return summarize(t.name, correct, ks)


def _write_lines(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


# ----------------------------------------------------------------------------- run_eval

def run_eval(model_dir: str | os.PathLike[str] | None, tasks: Sequence[str | Task] | str,
             limit: int | None, samples: int, sampler_config: Any,
             out_dir: str | os.PathLike[str], seed: int = 0, *,
             data_dir: str | os.PathLike[str] | None = None, batch_size: int | None = None,
             generate_fn: GenerateFn | None = None, tokenizer: Any = None,
             workers: int = 2, sandbox_config: SandboxConfig | None = None,
             time_limit_s: float | None = ITEM_TIME_LIMIT_S, dtype: str = "float32",
             progress: bool = True) -> dict[str, Any]:
    """Generates ``samples`` completions per item, scores them, and writes results (resumable).

    Per task, ``out_dir/<task>/results.jsonl`` gets one line per item as soon as it is scored
    (``{"id", "index", "completions", "correct", "answers", "errors"}``: per completion, whether
    it solved the item, the answer extracted from it (null if none) and why it was not judged
    (null, or e.g. the time limit)); a restarted run skips the ids already there.
    At the end ``out_dir/summary.json`` and ``out_dir/summary.md`` hold pass@k per task and the
    full generation config. The key for item ``i``'s chunk ``j`` is
    ``fold_in(fold_in(key(seed), i), j)``, so results do not depend on where a run was resumed.

    Args:
      model_dir: checkpoint directory (model and tokenizer); may be None with ``generate_fn``
        and ``tokenizer`` given.
      tasks: names (or a comma-separated string) or :class:`~dllm_jax.tasks.Task` objects.
      limit: first ``limit`` items of each task (None: all).
      samples: completions per item (the n of pass@k).
      sampler_config: the sampler's frozen config (recorded; used by the default generator).
      out_dir: output directory.
      seed: base seed.
      data_dir: directory with the benchmark files (None: each task's HF dataset).
      batch_size: prompts per generate call (default ``samples``); the last chunk is padded.
      generate_fn: ``(prompt_ids, key) -> completion ids`` replacing the model's sampler.
      tokenizer: replaces the tokenizer saved in ``model_dir``.
      workers: sandbox processes at once for code tasks.
      sandbox_config: sandbox limits for code tasks.
      time_limit_s: wall-clock limit for scoring one non-code completion.
      dtype: model dtype for the default generator.
      progress: show a tqdm bar.

    Returns:
      ``{task name: summary dict}`` (see :func:`summarize`).
    """
    needs_model = generate_fn is None or tokenizer is None
    task_list, batch = _check_run(tasks, limit, samples, batch_size, model_dir, needs_model)
    items = {t.name: t.load(data_dir, limit) for t in task_list}  # data errors before models
    if tokenizer is None:
        tokenizer = load_tokenizer(model_dir)
    if generate_fn is None:
        generate_fn = _model_generate_fn(model_dir, dtype, tokenizer, sampler_config, batch)
    sample = functools.partial(_sample_item, tokenizer=tokenizer, generate_fn=generate_fn,
                               base_key=jax.random.key(seed), samples=samples, batch=batch)
    runner = program_runner(sandbox_config, workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {t.name: _eval_task(t, items[t.name], out / t.name, sample,
                                    functools.partial(t.grade_many, run_programs=runner,
                                                      time_limit_s=time_limit_s), progress)
                 for t in task_list}
    _write_summary(out, summaries, {
        "model": str(model_dir), "seed": seed, "samples": samples, "limit": limit,
        "batch_size": batch, "data_dir": None if data_dir is None else str(data_dir),
        **_config_dict(sampler_config)})
    return summaries


def _check_run(tasks: Sequence[str | Task] | str, limit: int | None, samples: int,
               batch_size: int | None, model_dir: Any,
               needs_model: bool) -> tuple[list[Task], int]:
    """The tasks and the generate batch of a run, after checking its arguments."""
    task_list = parse_task_list(tasks) if isinstance(tasks, str) else [_as_task(t) for t in tasks]
    if not task_list:
        raise ConfigError("no tasks given")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be a positive integer, got {samples!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    batch = batch_size or samples
    if batch < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch}")
    if needs_model and (model_dir is None or not Path(model_dir).is_dir()):
        raise ConfigError(f"--model {model_dir} is not a directory")
    return task_list, batch


def _eval_task(task: Task, items: list[Item], task_dir: Path, sample: SampleFn,
               grade: Callable[[list[tuple[Item, str]]], list[Grade]],
               progress: bool) -> dict[str, Any]:
    """Generates and scores the items not yet in ``task_dir/results.jsonl`` (one line each,
    written as soon as it is scored) and summarises the task over all its items."""
    task_dir.mkdir(exist_ok=True)
    res_path = task_dir / "results.jsonl"
    done = _read_results(res_path)
    todo = [(i, it) for i, it in enumerate(items) if str(it["id"]) not in done]
    with open(res_path, "a", encoding="utf-8") as f, tqdm(
            total=len(items), initial=len(items) - len(todo), desc=task.name,
            disable=not progress) as bar:
        for index, item in todo:
            completions = sample(task, item, index)
            grades = grade([(item, c) for c in completions])
            done[str(item["id"])] = _append_result(f, {
                "id": item["id"], "index": index, "completions": completions,
                "correct": [g.solved for g in grades], "answers": [g.answer for g in grades],
                "errors": [g.error for g in grades]})
            bar.update(1)
    wanted = {str(it["id"]) for it in items}
    return summarize(task.name, {i: r["correct"] for i, r in done.items() if i in wanted})


def _sample_item(task: Task, item: Item, index: int, *, tokenizer: Any, generate_fn: GenerateFn,
                 base_key: Any, samples: int, batch: int) -> list[str]:
    """``samples`` completions of ``item``'s prompt, ``batch`` per generate call; chunk ``j``
    uses ``fold_in(fold_in(base_key, index), j)``."""
    prompt = task.encode_prompt(tokenizer, item)
    item_key = jax.random.fold_in(base_key, index)
    completions: list[str] = []
    for j, start in enumerate(range(0, samples, batch)):
        m = min(batch, samples - start)
        rows = generate_fn([prompt] * m, jax.random.fold_in(item_key, j))
        if len(rows) != m:
            raise ValueError(f"generate_fn returned {len(rows)} rows for {m} prompts")
        completions += [tokenizer.decode([int(x) for x in r], skip_special_tokens=True)
                        for r in rows]
    return completions


def _read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Already-scored items; a torn last line (killed mid-write) is cut off the file."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    data = path.read_bytes()
    good = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        done[str(rec["id"])] = rec
        good += len(line)
    if good != len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


def _append_result(f: IO[str], rec: dict[str, Any]) -> dict[str, Any]:
    """Writes one result line and syncs it to disk (a killed run loses at most that line)."""
    f.write(json.dumps(rec) + "\n")
    f.flush()
    os.fsync(f.fileno())
    return rec


def _model_generate_fn(model_dir: Any, dtype: str, tokenizer: Any, config: Any,
                       batch: int) -> GenerateFn:
    """The sampler over the checkpoint in ``model_dir``: left-pads prompts into buckets,
    returns completions cut at the first EOS."""
    model = from_pretrained(model_dir, dtype=dtype)
    mc = model.config
    pad = special_id(tokenizer, "pad")
    if pad is None:
        pad = mc.pad_token_id if mc.pad_token_id is not None else (mc.eos_token_id or 0)
    eos_id = mc.eos_token_id

    def fn(prompts: list[list[int]], key: Any) -> list[list[int]]:
        ids_BP, mask_BP = left_pad(prompts, int(pad), batch_buckets=(batch,))
        out = generate(model, ids_BP, mask_BP, config=config, key=key)
        rows = np.asarray(out.sequences)[: len(prompts), ids_BP.shape[1]:].tolist()
        return [row[: row.index(eos_id)] if eos_id is not None and eos_id in row else row
                for row in rows]

    return fn


def _config_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        return {"sampler": type(cfg).__name__, **dataclasses.asdict(cfg)}
    return {"sampler": repr(cfg)}


def _write_summary(out: Path, summaries: dict[str, Any], config: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps({"config": config, "tasks": summaries},
                                                 indent=2))
    ks = sorted({int(k[5:]) for s in summaries.values() for k in s
                 if k.startswith("pass@") and not k.endswith("_stderr")})
    lines = ["# Evaluation summary", "", "| task | problems | n | "
             + " | ".join(f"pass@{k}" for k in ks) + " |",
             "|---|---|---|" + "---|" * len(ks)]
    for name, s in summaries.items():
        cells = [f"{100 * s[f'pass@{k}']:.1f} ± {100 * s[f'pass@{k}_stderr']:.1f}"
                 if f"pass@{k}" in s else "" for k in ks]
        lines.append(f"| {name} | {s['num_problems']} | {s['num_samples']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Percentages; ± is the standard error across problems.", "",
              "## Generation config", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in config.items()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
