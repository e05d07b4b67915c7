"""The project's one record reader, and prompts / SFT pairs built from its records.

:func:`load_records` reads local JSONL / JSON / CSV / Parquet files (gzipped JSONL and CSV too),
directories saved by ``datasets`` and HF dataset names; training data and the tasks'
benchmark files (:mod:`dllm_jax.tasks`) both load through it. Local files are read with plain
readers (no network, no cache writes, field types kept as the file has them); a directory
saved with ``datasets.Dataset.save_to_disk`` and an HF dataset name go through ``datasets``
(offline once cached). Prompts are rendered with the tokenizer's chat
template when it has one; SFT pairs become ``[left padding] prompt | answer EOS [EOS padding]``
with a response mask over the answer block. Orders are pure functions of (seed, epoch), so a
resumed run sees the same data; :func:`host_shard` gives each host a disjoint, equal slice.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dllm_jax.data.batching import left_pad
from dllm_jax.data.tokenizer import encode_plain, render_prompt, special_id
from dllm_jax.errors import ConfigError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


# ----------------------------------------------------------------------------- records
def _read_json(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of records
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not JSON ({e})") from None
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{lineno}: not a JSON line ({e})") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ConfigError(f"{path}: record {bad} is not a JSON object")
    return rows


def _read_csv(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises its own error types for a damaged file
        raise ConfigError(f"{path}: cannot read Parquet ({type(e).__name__}: {e})") from None


def _load_hf(source: str, split: str, config: str | None) -> list[dict]:
    import datasets

    path = Path(source)
    try:
        saved = ("dataset_info.json", "state.json", "dataset_dict.json")
        if path.is_dir() and any((path / name).is_file() for name in saved):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ConfigError(f"{source} has no split {split!r}; splits: {list(ds)}")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(source, config, split=split)
    except ConfigError:
        raise
    except Exception as e:  # offline and not cached, unknown name, ...: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load dataset {source!r} (split {split!r}): {first}") from None
    return [dict(r) for r in ds]


def load_records(source: str | Path, split: str = "train", fields: Sequence[str] = (), *,
                 config: str | None = None, limit: int | None = None) -> list[dict]:
    """Rows of a local file (by extension) or an HF dataset, as dicts.

    Args:
      source: a ``.jsonl``/``.json`` (a JSON array or JSON lines), ``.csv`` or ``.parquet`` file
        (``.jsonl.gz``/``.csv.gz`` too), a directory saved by ``datasets``, or an HF dataset
        name such as ``openai/gsm8k``.
      split: the split of an HF dataset (local files are one split).
      fields: fields every record must have (e.g. the prompt and answer fields).
      config: HF dataset configuration name (e.g. ``main`` for gsm8k).
      limit: keep only the first ``limit`` records.

    Raises:
      ConfigError: a missing file, an unknown extension, an unreadable file, no records, a
        required field absent (naming the record and the fields it has).
    """
    text = str(source)
    path = Path(text).expanduser()
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    base_suffix = suffix.removesuffix(".gz")
    looks_local = (path.exists() or bool(suffix) or text.startswith((".", "/", "~"))
                   or text.endswith("/"))
    if path.is_dir():
        rows = _load_hf(str(path), split, config)
    elif looks_local:
        if not path.is_file():
            raise ConfigError(f"data file {text} does not exist")
        kind = FORMATS.get(base_suffix)
        if kind is None or (kind == "parquet" and suffix != base_suffix):
            raise ConfigError(f"unknown data file type {suffix!r} for {text}; "
                             f"use one of {sorted(FORMATS)} (.jsonl and .csv may be gzipped)")
        rows = {"json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind](path)
    else:
        rows = _load_hf(text, split, config)
    if not rows:
        raise ConfigError(f"{text}: no records")
    if limit is not None:
        rows = rows[:limit]
    for i, r in enumerate(rows):
        missing = [f for f in fields if f not in r]
        if missing:
            raise ConfigError(f"{text} has no field {missing[0]!r} (record {i}); fields: "
                             f"{sorted(r)}")
    return rows


# ----------------------------------------------------------------------------- tokenizing
def encode_sft(records: Sequence[dict], tokenizer: Any, *, prompt_field: str = "prompt",
               answer_field: str = "answer", max_prompt_length: int = 256,
               max_answer_length: int = 256, chat_template: bool = True,
               system_prompt: str | None = None, eos_id: int | None = None,
               pad_id: int | None = None) -> dict[str, np.ndarray]:
    """SFT pairs as fixed-shape int32 arrays ``[N, P + A]``.

    Layout of a row: ``P`` prompt columns (the rendered prompt, left-padded with ``pad_id``,
    truncated from the left to ``max_prompt_length``), then ``A`` answer columns (the answer's
    ids with no special tokens, truncated to ``max_answer_length - 1``, one EOS, then EOS
    padding to the longest answer in ``records``). ``P`` and ``A`` are the longest lengths
    present.

    Returns:
      ``tokens``; ``response_mask`` (1 on the whole answer block, EOS padding included, as in
      LLaDA's SFT, so the model learns where to stop; 0 on the prompt block);
      ``attention_mask`` (0 on the prompt's left padding only).

    Raises:
      ValueError: no records, a record without the fields, an empty prompt, no EOS id.
    """
    if not records:
        raise ValueError("encode_sft: no records")
    if max_prompt_length < 1 or max_answer_length < 2:
        raise ValueError("encode_sft: max_prompt_length must be >= 1 and max_answer_length "
                         ">= 2 (room for the EOS)")
    eos = special_id(tokenizer, "eos") if eos_id is None else int(eos_id)
    if eos is None:
        raise ValueError("encode_sft: the tokenizer has no EOS id; pass eos_id")
    pad = (special_id(tokenizer, "pad") if pad_id is None else int(pad_id))
    pad = eos if pad is None else pad
    for i, r in enumerate(records):
        for f in (prompt_field, answer_field):
            if f not in r:
                raise ValueError(f"record {i} has no field {f!r}; fields: {sorted(r)}")
    prompts = [render_prompt(tokenizer, str(r[prompt_field]), chat_template,
                             system_prompt)[-max_prompt_length:] for r in records]
    empty = next((i for i, p in enumerate(prompts) if not p), None)
    if empty is not None:
        raise ValueError(f"record {empty}: the prompt encodes to no tokens")
    answers = [encode_plain(tokenizer, str(r[answer_field]))[:max_answer_length - 1] + [eos]
               for r in records]
    p_ids, p_mask = left_pad(prompts, pad, buckets=None)
    width = max(len(a) for a in answers)
    a_ids = np.full((len(answers), width), eos, np.int32)
    for i, a in enumerate(answers):
        a_ids[i, :len(a)] = a
    tokens = np.concatenate([p_ids, a_ids], 1).astype(np.int32)
    resp = np.concatenate([np.zeros_like(p_ids), np.ones_like(a_ids)], 1).astype(np.int32)
    att = np.concatenate([p_mask, np.ones_like(a_ids)], 1).astype(np.int32)
    return {"tokens": tokens, "response_mask": resp, "attention_mask": att}


def encode_prompts(records: Sequence[dict], tokenizer: Any, *, prompt_field: str = "prompt",
                   max_prompt_length: int = 256, chat_template: bool = True,
                   system_prompt: str | None = None, pad_id: int | None = None,
                   buckets: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Prompts only (for RL rollouts or evaluation): ``prompt_BP`` left-padded with ``pad_id``
    and ``attention_mask_BP`` (0 on padding); ``P`` is the longest prompt or its bucket."""
    if not records:
        raise ValueError("encode_prompts: no records")
    for i, r in enumerate(records):
        if prompt_field not in r:
            raise ValueError(f"record {i} has no field {prompt_field!r}; fields: {sorted(r)}")
    pad = special_id(tokenizer, "pad") if pad_id is None else int(pad_id)
    pad = special_id(tokenizer, "eos") if pad is None else pad
    if pad is None:
        raise ValueError("encode_prompts: the tokenizer has no PAD or EOS id; pass pad_id")
    prompts = [render_prompt(tokenizer, str(r[prompt_field]), chat_template,
                             system_prompt)[-max_prompt_length:] for r in records]
    ids, mask = left_pad(prompts, pad, buckets=buckets)
    return {"prompt_BP": ids.astype(np.int32), "attention_mask_BP": mask.astype(np.int32)}


# ----------------------------------------------------------------------------- orders
def _check_nonneg(**kw: int) -> None:
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ValueError(f"{k} must be a non-negative int, got {v!r}")


def epoch_order(num_records: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(num_records)`` that is a pure function of its arguments."""
    _check_nonneg(num_records=num_records, seed=seed, epoch=epoch)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(num_records))


def batch_rows(num_records: int, batch: int, seed: int, step: int) -> np.ndarray:
    """Row indices of global batch ``step``: consecutive slices of per-epoch permutations
    (the remainder of each epoch is dropped), a pure function of its arguments."""
    _check_nonneg(num_records=num_records, seed=seed, step=step)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    per_epoch = num_records // batch
    if per_epoch == 0:
        raise ValueError(f"batch {batch} is larger than the dataset ({num_records} records)")
    epoch, i = divmod(int(step), per_epoch)
    return epoch_order(num_records, seed, epoch)[i * batch:(i + 1) * batch]


def host_shard(indices: np.ndarray | Sequence[int], process_index: int,
               process_count: int) -> np.ndarray:
    """This host's contiguous slice of a global batch's rows: disjoint across hosts, equal in
    size, in order (host ``i`` holds rows ``i*n/k .. (i+1)*n/k``, the layout
    ``jax.make_array_from_process_local_data`` expects for a batch-sharded axis)."""
    indices = np.asarray(indices)
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    n = len(indices)
    if n % process_count:
        raise ValueError(f"global batch {n} is not divisible by {process_count} hosts")
    per = n // process_count
    return indices[process_index * per:(process_index + 1) * per]
