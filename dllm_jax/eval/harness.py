"""Scoring prediction files and the resumable generate-then-score evaluation loop."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dllm_jax.errors import ConfigError
from dllm_jax.tasks.benchmarks import Item, Task, get_task
from dllm_jax.eval.metrics import default_ks, mean_and_stderr, pass_at_k

# generate_fn(prompt_ids, key) -> completion token ids, one list per prompt row.
GenerateFn = Callable[[list[list[int]], Any], list[list[int]]]


def _as_task(task: str | Task) -> Task:
    return task if isinstance(task, Task) else get_task(task)


def read_predictions(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """``{"id", "completion"}`` JSONL -> completions per ``str(id)`` (file order kept).

    Raises:
      FileNotFoundError: no such file.
      ConfigError: a line that is not such an object, or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not JSON: {e}") from None
            if not isinstance(rec, dict) or "id" not in rec or not isinstance(
                    rec.get("completion"), str):
                raise ConfigError(f"{path}:{lineno}: expected {{\"id\", \"completion\": str}}")
            out.setdefault(str(rec["id"]), []).append(rec["completion"])
    if not out:
        raise ConfigError(f"{path}: no predictions")
    return out


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
                      sandbox_config: Any = None) -> dict[str, Any]:
    """Scores a predictions file against a dataset (no model needed).

    Args:
      task: task name or :class:`Task`.
      data_path: dataset file / directory / HF name (None: the task's HF default).
      predictions_jsonl: ``{"id", "completion"}`` lines, several per id for pass@k.
      ks: the k's to report (default powers of two up to the samples per problem).
      workers: sandbox processes at once for code tasks.
      sandbox_config: :class:`dllm_jax.eval.sandbox.SandboxConfig` for code tasks.

    Returns:
      :func:`summarize`'s dict over the problems that have predictions.

    Raises:
      ConfigError: unknown task, malformed predictions, or ids not in the dataset.
    """
    t = _as_task(task)
    preds = read_predictions(predictions_jsonl)
    items = {str(it["id"]): it for it in t.load(data_path)}
    unknown = [i for i in preds if i not in items]
    if unknown:
        raise ConfigError(f"{len(unknown)} prediction id(s) not in the {t.name} data, "
                          f"e.g. {unknown[0]!r}")
    pairs = [(items[i], c) for i, cs in preds.items() for c in cs]
    ok = t.score_many(pairs, sandbox_config=sandbox_config, workers=workers)
    correct: dict[str, list[bool]] = {}
    for (item, _), passed in zip(pairs, ok, strict=True):
        correct.setdefault(str(item["id"]), []).append(bool(passed))
    return summarize(t.name, correct, ks)


# ----------------------------------------------------------------------------- run_eval

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


def _model_generate_fn(model: Any, config: Any, pad_id: int, eos_id: int | None,
                       batch: int) -> GenerateFn:
    """The sampler over a model: left-pads prompts into buckets, returns completions cut at
    the first EOS."""
    from dllm_jax.data.batching import left_pad
    from dllm_jax.sampling import generate

    def fn(prompts: list[list[int]], key: Any) -> list[list[int]]:
        ids_BP, mask_BP = left_pad(prompts, pad_id, batch_buckets=(batch,))
        out = generate(model, ids_BP, mask_BP, config=config, key=key)
        seqs = np.asarray(out.sequences)[: len(prompts), ids_BP.shape[1]:]
        rows = []
        for row in seqs.tolist():
            if eos_id is not None and eos_id in row:
                row = row[: row.index(eos_id)]
            rows.append(row)
        return rows

    return fn


def _config_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        return {"sampler": type(cfg).__name__, **dataclasses.asdict(cfg)}
    return {"sampler": repr(cfg)}


def run_eval(model_dir: str | os.PathLike[str] | None, tasks: Sequence[str | Task] | str,
             limit: int | None, samples: int, sampler_config: Any,
             out_dir: str | os.PathLike[str], seed: int = 0, *,
             data_dir: str | os.PathLike[str] | None = None, batch_size: int | None = None,
             generate_fn: GenerateFn | None = None, tokenizer: Any = None,
             workers: int = 2, sandbox_config: Any = None, dtype: str = "float32",
             progress: bool = True) -> dict[str, Any]:
    """Generates ``samples`` completions per item, scores them, and writes results (resumable).

    Per task, ``out_dir/<task>/results.jsonl`` gets one line per item as soon as it is scored
    (``{"id", "index", "completions", "correct"}``); a restarted run skips the ids already there.
    At the end ``out_dir/summary.json`` and ``out_dir/summary.md`` hold pass@k per task and the
    full generation config. The key for item ``i``'s chunk ``j`` is
    ``fold_in(fold_in(key(seed), i), j)``, so results do not depend on where a run was resumed.

    Args:
      model_dir: checkpoint directory (model and tokenizer); may be None with ``generate_fn``
        and ``tokenizer`` given.
      tasks: names (or a comma-separated string) or :class:`Task` objects.
      limit: first ``limit`` items of each task (None: all).
      samples: completions per item (the n of pass@k).
      sampler_config: the sampler's frozen config (recorded; used by the default generator).
      out_dir: output directory.
      seed: base seed.
      data_dir: directory with the benchmark files (None: each task's HF dataset).
      batch_size: prompts per generate call (default ``samples``); the last chunk is padded.
      generate_fn: ``(prompt_ids, key) -> completion ids`` replacing the model's sampler.
      tokenizer: replaces ``AutoTokenizer.from_pretrained(model_dir)``.
      workers: sandbox processes at once for code tasks.
      sandbox_config: sandbox limits for code tasks.
      dtype: model dtype for the default generator.
      progress: show a tqdm bar.

    Returns:
      ``{task name: summary dict}``.
    """
    if isinstance(tasks, str):
        from dllm_jax.tasks.benchmarks import parse_task_list

        task_objs = parse_task_list(tasks)
    else:
        task_objs = [_as_task(t) for t in tasks]
    if not task_objs:
        raise ConfigError("no tasks given")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be a positive integer, got {samples!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    batch = batch_size or samples
    if batch < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch}")
    if generate_fn is None or tokenizer is None:
        if model_dir is None or not Path(model_dir).is_dir():
            raise ConfigError(f"--model {model_dir} is not a directory")
    loaded = {t.name: t.load(data_dir, limit) for t in task_objs}  # data errors before models
    if tokenizer is None:
        from dllm_jax.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(model_dir)
    if generate_fn is None:
        import dllm_jax

        model = dllm_jax.from_pretrained(model_dir, dtype=dtype)
        mc = model.config
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else (mc.pad_token_id if mc.pad_token_id is not None
                                           else mc.eos_token_id or 0)
        generate_fn = _model_generate_fn(model, sampler_config, int(pad), mc.eos_token_id, batch)

    import jax
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_key = jax.random.key(seed)
    summaries: dict[str, Any] = {}
    for t in task_objs:
        items = loaded[t.name]
        tdir = out / t.name
        tdir.mkdir(exist_ok=True)
        res_path = tdir / "results.jsonl"
        done = _read_results(res_path)
        todo = [(i, it) for i, it in enumerate(items) if str(it["id"]) not in done]
        with open(res_path, "a", encoding="utf-8") as f, tqdm(
                total=len(items), initial=len(items) - len(todo), desc=t.name,
                disable=not progress) as bar:
            for index, item in todo:
                completions = _sample_item(t, item, index, tokenizer, generate_fn, base_key,
                                           samples, batch)
                ok = t.score_many([(item, c) for c in completions],
                                  sandbox_config=sandbox_config, workers=workers)
                rec = {"id": item["id"], "index": index, "completions": completions,
                       "correct": [bool(x) for x in ok]}
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
                done[str(item["id"])] = rec
                bar.update(1)
        wanted = {str(it["id"]) for it in items}
        summaries[t.name] = summarize(
            t.name, {i: r["correct"] for i, r in done.items() if i in wanted})
    _write_summary(out, summaries, {
        "model": str(model_dir), "seed": seed, "samples": samples, "limit": limit,
        "batch_size": batch, "data_dir": None if data_dir is None else str(data_dir),
        **_config_dict(sampler_config)})
    return summaries


def _sample_item(t: Task, item: Item, index: int, tokenizer: Any, generate_fn: GenerateFn,
                 base_key: Any, samples: int, batch: int) -> list[str]:
    import jax

    prompt = t.encode_prompt(tokenizer, item)
    item_key = jax.random.fold_in(base_key, index)
    completions: list[str] = []
    for j, start in enumerate(range(0, samples, batch)):
        m = min(batch, samples - start)
        rows = generate_fn([prompt] * m, jax.random.fold_in(item_key, j))
        if len(rows) != m:
            raise ValueError(f"generate_fn returned {len(rows)} rows for {m} prompts")
        completions += [_decode(tokenizer, [int(x) for x in r]) for r in rows]
    return completions


def _decode(tokenizer: Any, ids: list[int]) -> str:
    try:
        return tokenizer.decode(ids, skip_special_tokens=True)
    except TypeError:  # tokenizers without HF's keyword (dllm_jax.data.chartok)
        return tokenizer.decode(ids)


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
