"""The one task interface: :class:`Task`, which every task implements (the built-in puzzles and
the benchmarks alike), the data files a task loads its items from, and the answer format
shared by the prompts.

An *item* is one record of a task as a dict: the data set's own fields plus ``"id"`` (the data
set's ``task_id`` where it has one, else the record's 0-based index), ``"source_id"`` where the
record names itself (its first field of :data:`OWN_ID_FIELDS`: HumanEval's and MBPP's
``task_id``, MATH500's ``unique_id``, AIME's ``id``), and whatever fields the task adds when it
loads a record (e.g. Countdown's ``numbers`` and ``target``). The puzzles' generated
:class:`~dllm_jax.tasks.common.Example` objects carry the same fields in ``meta``, so either can
be scored.

Scoring a completion gives a :class:`Grade`: whether it solves its item, the answer it commits
to, and an error when it was not judged. Every non-code completion is scored under a wall-clock
limit (:func:`~dllm_jax.tasks.limits.call_with_time_limit`); past it, it scores 0 with the
error recorded.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dllm_jax.data.records import load_records
from dllm_jax.data.tokenizer import render_prompt
from dllm_jax.errors import ConfigError
from dllm_jax.tasks.answers import extract_answer_tag
from dllm_jax.tasks.limits import ScoringTimeout, call_with_time_limit

Item = dict[str, Any]
# Runs candidate programs (each with its tests) and says which passed; code tasks score
# through one (the evaluation layer supplies the sandboxed runner).
RunPrograms = Callable[[Sequence[str]], list[bool]]

OWN_ID_FIELDS = ("task_id", "unique_id", "id")  # fields a data set names its records by
ITEM_TIME_LIMIT_S = 10.0  # default wall-clock limit for scoring one non-code completion

FORMAT_TAIL = ("Respond in exactly this format:\n<reasoning>\nyour step-by-step reasoning\n"
               "</reasoning>\n<answer>\n{answer}\n</answer>")


def answer_block(reasoning: str, answer: str) -> str:
    """A completion in the ``<reasoning>`` / ``<answer>`` format the prompts ask for."""
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataFiles:
    """Where a task's records live and what each must hold.

    Attributes:
      files: file names looked for in a data directory, in order.
      required: fields every record must have.
      hf: ``(dataset, config, split)`` read when no source is given; None: a path is needed.
      id_range: keep only items whose id is in this inclusive range (MBPP's test split).
    """

    files: tuple[str, ...]
    required: tuple[str, ...]
    hf: tuple[str, str | None, str] | None = None
    id_range: tuple[int, int] | None = None

    def read(self, task: str, source: str | Path | None, limit: int | None) -> list[Item]:
        """The items of ``task`` from ``source``: a file, a directory holding one of
        :attr:`files`, an HF dataset name, or None for :attr:`hf`.

        Raises:
          ConfigError: no source and no default, a directory without the task's file, a
            missing or unreadable file, a record without a required field.
        """
        path, split, config = self._locate(task, source)
        records = load_records(path, split, self.required, config=config)
        items = [_item(i, r) for i, r in enumerate(records)]
        if self.id_range is not None:
            lo, hi = self.id_range
            items = [it for it in items if lo <= int(it["id"]) <= hi]
        return items if limit is None else items[:limit]

    def _locate(self, task: str, source: str | Path | None) -> tuple[str, str, str | None]:
        """``(path or dataset name, split, config)`` for :func:`load_records`."""
        if source is None:
            if self.hf is None:
                raise ConfigError(f"task {task} has no default dataset; give a data path")
            name, config, split = self.hf
            return name, split, config
        directory = Path(source)
        if directory.is_dir():
            found = [directory / f for f in self.files if (directory / f).is_file()]
            if not found:
                raise ConfigError(f"{source}: none of {list(self.files)} for task {task}")
            return str(found[0]), "test", None
        if self.hf is None:
            return str(source), "test", None
        name, config, split = self.hf
        return str(source), split, config if str(source) == name else None  # a file or a name


def _item(index: int, record: Item) -> Item:
    """A record with its ``id`` (``task_id``, else ``index``) and ``source_id`` (the record's own
    id, where it has one; a record's ``id`` field is kept there before ``id`` replaces it)."""
    item = {**record, "id": record.get("task_id", index)}
    own = next((record[f] for f in OWN_ID_FIELDS if record.get(f) is not None), None)
    if own is not None:
        item["source_id"] = own
    return item


@dataclasses.dataclass(frozen=True)
class Grade:
    """How one completion scored.

    Attributes:
      solved: whether it solves its item.
      answer: the answer it commits to (None: it commits to none).
      error: why it scored 0 without being judged (it ran past the time limit), else None.
    """

    solved: bool
    answer: str | None
    error: str | None = None


class Task(abc.ABC):
    """What every task offers: items, the prompt for an item, and the scoring of a completion.

    Attributes:
      name: the registry key (``get_task(name)``).
      data: where :meth:`load` reads items from; None for a task whose items are only
        generated (the built-in puzzles add ``generate``, see
        :class:`~dllm_jax.tasks.common.Puzzle`).
    """

    name: str
    data: DataFiles | None

    def load(self, source: str | Path | None = None, limit: int | None = None) -> list[Item]:
        """The first ``limit`` items (None: all) from a file, a data directory, an HF dataset
        name, or (``source=None``) the task's default dataset.

        Raises:
          ConfigError: see :meth:`DataFiles.read`; a task without data files.
        """
        if self.data is None:
            raise ConfigError(f"task {self.name} has no data files; its examples are "
                              f"generated (get_task({self.name!r}).generate(seed, n))")
        return [self.from_record(r) for r in self.data.read(self.name, source, limit)]

    def from_record(self, record: Item) -> Item:
        """The item for a loaded record (a task adds the fields its scoring reads)."""
        return record

    @abc.abstractmethod
    def prompt_text(self, item: Item) -> str:
        """The user message for ``item``."""

    def encode_prompt(self, tokenizer: Any, item: Item) -> list[int]:
        """Token ids of the prompt, through the tokenizer's chat template when it has one."""
        return [int(t) for t in render_prompt(tokenizer, self.prompt_text(item))]

    @abc.abstractmethod
    def reference_completion(self, item: Item) -> str:
        """A completion built from the item's own solution; it scores as solved."""

    @abc.abstractmethod
    def reward(self, item: Item, completion: str) -> float:
        """The reward in [0, 1] of a completion (1.0: correct); never raises on model output."""

    def solved(self, item: Item, completion: str) -> bool:
        """Whether ``completion`` solves ``item`` (by default: its reward is 1.0)."""
        return self.reward(item, completion) == 1.0

    def answer_of(self, completion: str) -> str | None:
        """The answer ``completion`` commits to, reported beside its score (by default the
        content of its last ``<answer>`` block); None if it commits to none."""
        return extract_answer_tag(completion)

    def grade_many(self, pairs: Sequence[tuple[Item, str]],
                   run_programs: RunPrograms | None = None,
                   time_limit_s: float | None = ITEM_TIME_LIMIT_S) -> list[Grade]:
        """A :class:`Grade` (:meth:`solved`, :meth:`answer_of`) for each ``(item, completion)``.

        Each pair is scored under a wall-clock limit of ``time_limit_s`` seconds (None: none);
        a pair past it is not solved, has no answer, and says so in ``error``. Code tasks run
        their programs with ``run_programs`` under the runner's own limits (other tasks ignore
        it).
        """
        self.warm_up()
        return [self._grade(item, completion, time_limit_s) for item, completion in pairs]

    def warm_up(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """One-time setup of the scorer (e.g. importing a checker), done before the first
        completion's time limit starts; nothing by default."""

    def _grade(self, item: Item, completion: str, time_limit_s: float | None) -> Grade:
        def grade() -> Grade:
            return Grade(solved=bool(self.solved(item, completion)),
                         answer=self.answer_of(completion))

        try:
            return call_with_time_limit(grade, time_limit_s)
        except ScoringTimeout:
            return Grade(solved=False, answer=None,
                         error=f"scoring took longer than the {time_limit_s:g} s limit")

    def score_many(self, pairs: Sequence[tuple[Item, str]],
                   run_programs: RunPrograms | None = None) -> list[bool]:
        """Whether each ``(item, completion)`` is solved (:meth:`grade_many`'s ``solved``)."""
        return [g.solved for g in self.grade_many(pairs, run_programs)]

    def score(self, item: Item, completion: str, run_programs: RunPrograms | None = None) -> bool:
        """:meth:`score_many` for one pair."""
        return self.score_many([(item, completion)], run_programs)[0]
