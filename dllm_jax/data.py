"""Prompts and SFT pairs from local JSONL / CSV / Parquet files or HF dataset names.

Records are read through ``datasets`` (offline-friendly: local files need no network), prompts
are rendered with the tokenizer's chat template when it has one, and SFT pairs become
``prompt + answer + EOS`` with a response mask. Orders are pure functions of (seed, epoch), so a
resumed run sees the same data; ``host_shard`` gives each host a disjoint, equal slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dllm_jax.buckets import left_pad

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_records(source: str, split: str = "train", fields: Sequence[str] = ()) -> list[dict]:
    """Rows of a local file (by extension) or an HF dataset name, as dicts.

    Raises:
      ValueError: unknown extension, missing file, or a required field absent.
    """
    import datasets

    path = Path(source)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if path.suffix or path.exists():
        if not path.is_file():
            raise ValueError(f"data file {source} does not exist")
        kind = FORMATS.get(suffix.replace(".gz", "")) if suffix else None
        if kind is None:
            raise ValueError(f"unknown data file type {suffix!r} for {source}; "
                             f"use one of {sorted(FORMATS)}")
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    else:
        ds = datasets.load_dataset(source, split=split)
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise ValueError(f"{source} has no field {missing[0]!r}; fields: {ds.column_names}")
    return [dict(r) for r in ds]


def render_prompt(tokenizer: Any, text: str, chat_template: bool = True) -> list[int]:
    """Token ids of a user prompt, through the chat template when the tokenizer has one."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return list(tokenizer.encode(text))


def encode_sft(records: Sequence[dict], tokenizer: Any, *, prompt_field: str = "prompt",
               answer_field: str = "answer", max_prompt_length: int = 256,
               max_answer_length: int = 256, chat_template: bool = True,
               eos_id: int | None = None, pad_id: int | None = None) -> dict[str, np.ndarray]:
    """``tokens [N, P + A]`` (left-padded prompt, answer, EOS, EOS padding), ``response_mask``
    (answer + EOS + its padding: the model learns to end) and ``attention_mask``."""
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    pad = (getattr(tokenizer, "pad_token_id", None) or eos) if pad_id is None else pad_id
    prompts = [render_prompt(tokenizer, str(r[prompt_field]), chat_template)[-max_prompt_length:]
               for r in records]
    answers = [list(tokenizer.encode(str(r[answer_field])))[:max_answer_length - 1] + [eos]
               for r in records]
    p_ids, p_mask = left_pad(prompts, pad, buckets=None)
    width = max(len(a) for a in answers)
    a_ids = np.full((len(answers), width), eos, np.int32)
    for i, a in enumerate(answers):
        a_ids[i, :len(a)] = a
    tokens = np.concatenate([p_ids, a_ids], 1)
    resp = np.concatenate([np.zeros_like(p_ids), np.ones_like(a_ids)], 1)
    att = np.concatenate([p_mask, np.ones_like(a_ids)], 1)
    return {"tokens": tokens, "response_mask": resp, "attention_mask": att}


def epoch_order(num_records: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation that is a pure function of its arguments."""
    return np.random.default_rng([seed, epoch]).permutation(num_records)


def batch_rows(num_records: int, batch: int, seed: int, step: int) -> np.ndarray:
    """Row indices of step ``step``: consecutive slices of per-epoch permutations."""
    per_epoch = num_records // batch
    if per_epoch == 0:
        raise ValueError(f"batch {batch} is larger than the dataset ({num_records} records)")
    epoch, i = divmod(step, per_epoch)
    return epoch_order(num_records, seed, epoch)[i * batch:(i + 1) * batch]


def host_shard(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This host's disjoint, equal slice of a global batch's rows."""
    n = len(indices)
    if n % process_count:
        raise ValueError(f"global batch {n} is not divisible by {process_count} hosts")
    per = n // process_count
    return indices[process_index * per:(process_index + 1) * per]
