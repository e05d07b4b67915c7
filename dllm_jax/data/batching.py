"""Static-shape bucketing: pad prompts to a few fixed lengths so a serving or eval loop compiles a
handful of programs instead of one per prompt length."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def bucket_for(length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """Smallest bucket >= ``length``.

    Raises:
      ValueError: ``length`` exceeds the largest bucket.
    """
    for b in sorted(buckets):
        if length <= b:
            return int(b)
    raise ValueError(f"prompt length {length} exceeds the largest bucket {max(buckets)}")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int,
             buckets: Sequence[int] | None = DEFAULT_BUCKETS,
             batch_buckets: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists into ``[B, P]`` ids and a 0/1 attention mask.

    Args:
      prompts: token id lists.
      pad_id: id written in padded slots (never attended to).
      buckets: allowed prompt lengths ``P``; ``None`` pads to the longest prompt only.
      batch_buckets: allowed batch sizes; extra rows are all-padding copies of row 0's shape.
    """
    if not prompts:
        raise ValueError("no prompts given")
    longest = max(len(p) for p in prompts)
    if longest == 0:
        raise ValueError("empty prompt")
    width = longest if buckets is None else bucket_for(longest, buckets)
    rows = len(prompts) if batch_buckets is None else bucket_for(len(prompts), batch_buckets)
    ids = np.full((rows, width), pad_id, np.int32)
    mask = np.zeros((rows, width), np.int32)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = np.asarray(p, np.int32)
            mask[i, width - len(p):] = 1
    for i in range(len(prompts), rows):  # filler rows: one real token so softmax stays finite
        ids[i, -1] = pad_id
        mask[i, -1] = 1
    return ids, mask


def completion_until_eos(ids: Sequence[int] | np.ndarray, eos_id: int | None) -> list[int]:
    """The generated ids before the first EOS (the EOS excluded): what a completion's text and
    reward are read from. ``eos_id`` None or negative: all of them."""
    row = [int(t) for t in np.asarray(ids).reshape(-1)]
    if eos_id is None or eos_id < 0 or eos_id not in row:
        return row
    return row[:row.index(eos_id)]
