"""Benchmark tasks: loading, d1 / LLaDA-style prompts, scoring and gold reference completions.

Items are dicts with the dataset's fields plus ``"id"``: the dataset's own ``task_id`` where it
has one (HumanEval, MBPP), else the 0-based record index (the line of a JSONL file, the row of
a CSV after its header). Predictions are matched to items by ``str(id)``.

The prompt wording is ours, written in the style of d1 (a ``<reasoning>`` / ``<answer>`` format
for gsm8k, math500, aime, countdown and sudoku) and of LLaDA's code evaluation (the function
stub or the problem text with its tests, answer in a ```python block).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import itertools
import json
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from dllm_jax.tasks import answers as rewards
from dllm_jax.errors import ConfigError

Item = dict[str, Any]

_FORMAT_TAIL = ("Respond in exactly this format:\n<reasoning>\nyour step-by-step reasoning\n"
                "</reasoning>\n<answer>\n{answer}\n</answer>")
MATH_SYSTEM_PROMPT = ("You are a careful mathematician. Work through the problem below step by "
                      "step, then state the final answer inside \\boxed{}.\n"
                      + _FORMAT_TAIL.format(answer="\\boxed{final answer}"))
COUNTDOWN_PROMPT = (
    "Using each of the numbers {numbers} exactly once, with + - * / and parentheses as needed, "
    "write an arithmetic expression whose value is exactly {target}. Put only the expression "
    "in the answer, with no equals sign and no result (for the numbers [2, 3, 4] and the "
    "target 5 the answer would be 2*4-3).\n" + _FORMAT_TAIL.format(answer="expression"))
SUDOKU_PROMPT = (
    "Solve this 4x4 Sudoku. Every row, every column and each of the four 2x2 boxes must "
    "contain the digits 1, 2, 3 and 4 exactly once. The grid is given row by row as 16 digits, "
    "with 0 for an empty cell:\n{puzzle}\nAnswer with the completed grid as 16 digits, row by "
    "row.\n" + _FORMAT_TAIL.format(answer="16 digits"))
HUMANEVAL_PROMPT = ("Complete the following Python function. Reply with the whole function in "
                    "a ```python code block.\n```python\n{prompt}```")
MBPP_PROMPT = ("You are an expert Python programmer. {text}\nYour code should pass these "
               "tests:\n{tests}\nReply with the code in a ```python code block.")


# ----------------------------------------------------------------------------- loading

def _read_records(path: Path) -> list[dict[str, Any]]:
    name = path.name.lower()
    if name.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f)]
    opener = gzip.open if name.endswith(".gz") else open
    if not (name.endswith(".jsonl") or name.endswith(".jsonl.gz") or name.endswith(".json")):
        raise ConfigError(f"{path}: expected a .jsonl, .jsonl.gz or .csv file")
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not JSON: {e}") from None
    return out


def _load_hf(spec: tuple[str, str | None, str]) -> list[dict[str, Any]]:
    import datasets

    name, config, split = spec
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, ...: one line for the CLI
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"could not load HF dataset {name} ({config}, {split}): {msg}") from e
    return [dict(r) for r in ds]


# ----------------------------------------------------------------------------- tasks

@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    """One benchmark.

    Attributes:
      name: registry key.
      files: file names looked for under a ``--data-dir``.
      hf: ``(dataset, config, split)`` used when no local path is given; None: a path is needed.
      required: fields every record must have.
      kind: ``math``, ``gsm8k``, ``countdown``, ``sudoku`` or ``code``.
    """

    name: str
    files: tuple[str, ...]
    hf: tuple[str, str | None, str] | None
    required: tuple[str, ...]
    kind: str

    # -- data
    def load(self, source: str | Path | None = None, limit: int | None = None) -> list[Item]:
        """Items from a file, a directory holding one of ``files``, or an HF dataset name.

        Raises:
          FileNotFoundError: a path that does not exist.
          ConfigError: a record without a required field, or no source at all.
        """
        records = self._records(source)
        items = []
        for idx, r in enumerate(records):
            missing = [k for k in self.required if k not in r]
            if missing:
                raise ConfigError(f"{self.name}: record {idx} lacks field(s) {missing}")
            item = dict(r)
            item["id"] = r["task_id"] if "task_id" in r else idx
            items.append(item)
        items = self._select(items)
        return items if limit is None else items[:limit]

    def _records(self, source: str | Path | None) -> list[dict[str, Any]]:
        if source is None:
            if self.hf is None:
                raise ConfigError(f"task {self.name} has no default dataset; give a data path")
            return _load_hf(self.hf)
        path = Path(source)
        if path.is_dir():
            for f in self.files:
                if (path / f).is_file():
                    return _read_records(path / f)
            raise FileNotFoundError(f"{path}: none of {list(self.files)} for task {self.name}")
        if path.is_file():
            return _read_records(path)
        if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) and not str(source).endswith(
                (".jsonl", ".gz", ".csv")):
            split = self.hf[2] if self.hf else "test"
            config = self.hf[1] if self.hf and self.hf[0] == str(source) else None
            return _load_hf((str(source), config, split))
        raise FileNotFoundError(f"{source}: no such file or directory")

    def _select(self, items: list[Item]) -> list[Item]:
        if self.name == "mbpp":  # the test split
            return [it for it in items if 11 <= int(it["id"]) <= 510]
        return items

    # -- prompts
    def prompt_text(self, item: Item) -> str:
        """The user message for ``item``."""
        if self.kind in ("math", "gsm8k"):
            q = item.get("question") if self.kind == "gsm8k" else item.get("problem")
            return f"{MATH_SYSTEM_PROMPT}\n\n{q}"
        if self.kind == "countdown":
            numbers, target = countdown_numbers(item)
            return COUNTDOWN_PROMPT.format(numbers=numbers, target=target)
        if self.kind == "sudoku":
            return SUDOKU_PROMPT.format(puzzle=item["Puzzle"])
        if self.name == "humaneval":
            return HUMANEVAL_PROMPT.format(prompt=item["prompt"])
        return MBPP_PROMPT.format(text=item["text"], tests="\n".join(item["test_list"]))

    def encode_prompt(self, tokenizer: Any, item: Item) -> list[int]:
        """Token ids of the prompt, through the tokenizer's chat template when it has one."""
        text = self.prompt_text(item)
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(t) for t in ids]
        return [int(t) for t in tokenizer.encode(text)]

    # -- gold
    def gold_answer(self, item: Item) -> str:
        if self.kind == "gsm8k":
            return rewards.extract_hash_answer(item["answer"]) or ""
        return str(item["answer"])

    def reference_completion(self, item: Item) -> str:
        """A completion built from the dataset's own solution, which must score as correct."""
        if self.kind == "gsm8k":
            reasoning = item["answer"].rsplit("####", 1)[0].strip()
            return (f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n"
                    f"{self.gold_answer(item)}\n</answer>")
        if self.kind == "math":
            return (f"<reasoning>\nSee the solution.\n</reasoning>\n<answer>\n"
                    f"\\boxed{{{self.gold_answer(item)}}}\n</answer>")
        if self.kind == "countdown":
            numbers, target = countdown_numbers(item)
            expr = solve_countdown(numbers, target)
            return f"<reasoning>\nSearch.\n</reasoning>\n<answer>\n{expr or ''}\n</answer>"
        if self.kind == "sudoku":
            return ("<reasoning>\nFill the grid.\n</reasoning>\n<answer>\n"
                    f"{item['Solution']}\n</answer>")
        if self.name == "humaneval":
            return f"```python\n{item['prompt']}{item['canonical_solution']}```"
        return f"```python\n{item['code']}\n```"

    # -- scoring
    def program(self, item: Item, completion: str) -> str:
        """Code tasks: the full program (candidate + the benchmark's tests) for the sandbox."""
        code = extract_code(completion)
        if self.name == "humaneval":
            entry = item["entry_point"]
            if not re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
                code = item["prompt"] + code  # a function body continuing the stub
            else:
                code = item["prompt"] + "    pass\n\n" + code  # keep the stub's imports
            return f"{code}\n\n{item['test']}\n\ncheck({entry})\n"
        setup = item.get("test_setup_code") or ""
        tests = "\n".join(item["test_list"])
        return f"{setup}\n{code}\n\n{tests}\n"

    def reward(self, item: Item, completion: str) -> float:
        """Non-code tasks: the d1 reward in [0, 1] (1.0 = correct)."""
        if self.kind == "gsm8k":
            return rewards.gsm8k_reward(completion, self.gold_answer(item))
        if self.kind == "math":
            return rewards.math_reward(completion, self.gold_answer(item))
        if self.kind == "countdown":
            numbers, target = countdown_numbers(item)
            return rewards.countdown_reward(completion, numbers, target)
        if self.kind == "sudoku":
            return rewards.sudoku_reward(completion, item["Puzzle"], item["Solution"])
        raise ValueError(f"task {self.name}: code is scored by running it (see score_many)")

    def score(self, item: Item, completion: str, sandbox_config: Any = None) -> bool:
        """Whether ``completion`` solves ``item`` (a sudoku must be fully solved)."""
        return self.score_many([(item, completion)], sandbox_config=sandbox_config)[0]

    def score_many(self, pairs: Sequence[tuple[Item, str]], sandbox_config: Any = None,
                   workers: int = 2) -> list[bool]:
        """:meth:`score` for many ``(item, completion)`` pairs; code runs in a bounded pool."""
        if self.kind == "code":
            from dllm_jax.eval.sandbox import run_programs

            results = run_programs([self.program(it, c) for it, c in pairs],
                                   config=sandbox_config, workers=workers)
            return [r.passed for r in results]
        return [self.reward(it, c) == 1.0 for it, c in pairs]


def countdown_numbers(item: Item) -> tuple[list[int], int]:
    """``([a, b, c], target)`` of a d1 countdown record (``input`` "a,b,c", ``output`` "t")."""
    try:
        numbers = [int(x) for x in str(item["input"]).split(",")]
        return numbers, int(item["output"])
    except (KeyError, ValueError) as e:
        raise ConfigError(f"countdown record {item.get('id')}: bad input/output: {e}") from None


def solve_countdown(numbers: Sequence[int], target: int) -> str | None:
    """An expression using each number once that equals ``target`` (exhaustive over operand
    orders, operators and both bracketings of three or more numbers), or None."""
    ops = "+-*/"

    def combos(nums: tuple[int, ...]) -> list[tuple[str, Fraction]]:
        if len(nums) == 1:
            return [(str(nums[0]), Fraction(nums[0]))]
        out = []
        for split in range(1, len(nums)):
            for (ls, lv), (rs, rv) in itertools.product(combos(nums[:split]),
                                                        combos(nums[split:])):
                for op in ops:
                    if op == "/" and rv == 0:
                        continue
                    val = {"+": lv + rv, "-": lv - rv, "*": lv * rv,
                           "/": lv / rv if rv else None}[op]
                    out.append((f"({ls}{op}{rs})", val))
        return out

    for perm in itertools.permutations(numbers):
        for expr, val in combos(tuple(perm)):
            if val == target:
                return expr[1:-1] if expr.startswith("(") else expr
    return None


_CODE_BLOCK = re.compile(r"```(?:python|py|Python)?[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The first fenced code block (an unclosed one runs to the end), else the whole text."""
    if not isinstance(completion, str):
        return ""
    m = _CODE_BLOCK.search(completion)
    return m.group(1) if m else completion


_MATH_REQ = ("problem", "answer")
TASKS: dict[str, Task] = {t.name: t for t in [
    Task(name="gsm8k", files=("gsm8k_test.jsonl", "gsm8k.jsonl"), hf=("openai/gsm8k", "main",
         "test"), required=("question", "answer"), kind="gsm8k"),
    Task(name="math500", files=("math500_test.jsonl", "math500.jsonl"),
         hf=("HuggingFaceH4/MATH-500", None, "test"), required=_MATH_REQ, kind="math"),
    Task(name="aime24", files=("aime24_test.jsonl", "aime24.jsonl"),
         hf=("HuggingFaceH4/aime_2024", None, "train"), required=_MATH_REQ, kind="math"),
    Task(name="aime25", files=("aime25_test_fixed.jsonl", "aime25_test.jsonl", "aime25.jsonl"),
         hf=None, required=_MATH_REQ, kind="math"),
    Task(name="humaneval", files=("humaneval.jsonl.gz", "HumanEval.jsonl.gz", "humaneval.jsonl"),
         hf=("openai/openai_humaneval", None, "test"),
         required=("task_id", "prompt", "test", "entry_point"), kind="code"),
    Task(name="mbpp", files=("mbpp.jsonl",), hf=("google-research-datasets/mbpp", "full",
         "test"), required=("task_id", "text", "test_list"), kind="code"),
    Task(name="countdown", files=("countdown_cd3_test.jsonl", "countdown.jsonl"), hf=None,
         required=("input", "output"), kind="countdown"),
    Task(name="sudoku", files=("sudoku_4x4_test.csv", "4x4_test_sudoku.csv", "sudoku.csv"),
         hf=None, required=("Puzzle", "Solution"), kind="sudoku"),
]}


def get_task(name: str) -> Task:
    """The registered task ``name``.

    Raises:
      ConfigError: unknown name (the message lists the known ones).
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def parse_task_list(text: str) -> list[Task]:
    """``"gsm8k,math500"`` -> tasks (duplicates and empty names rejected)."""
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise ConfigError(f"--tasks {text!r} has an empty task name")
    if len(set(names)) != len(names):
        raise ConfigError(f"--tasks {text!r} repeats a task")
    return [get_task(n) for n in names]


__all__ = ["TASKS", "Item", "Task", "countdown_numbers", "extract_code", "get_task",
           "parse_task_list", "solve_countdown"]
