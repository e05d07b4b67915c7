"""Code benchmarks: HumanEval and MBPP.

A completion is scored by running it with the benchmark's tests: :meth:`CodeTask.program`
builds the full program, and the caller supplies the runner (the evaluation harness runs the
programs in :mod:`dllm_jax.eval.sandbox`). The prompts follow LLaDA's code evaluation: the
function stub, or the problem text with its tests, answer in a ```python block.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Sequence

from dllm_jax.errors import ConfigError
from dllm_jax.tasks.base import ITEM_TIME_LIMIT_S, DataFiles, Grade, Item, RunPrograms, Task

HUMANEVAL_PROMPT = ("Complete the following Python function. Reply with the whole function in "
                    "a ```python code block.\n```python\n{prompt}```")
MBPP_PROMPT = ("You are an expert Python programmer. {text}\nYour code should pass these "
               "tests:\n{tests}\nReply with the code in a ```python code block.")

_FENCE = "```"


def extract_code(completion: str) -> str:
    """The first fenced code block (an unclosed one runs to the end), else the whole text.

    A block starts on the line after the first fence (the rest of the fence's line, e.g. a
    language name, is dropped) and ends at the next fence; a fence with no line after it opens
    no block. A few string searches, so linear in the completion.
    """
    if not isinstance(completion, str):
        return ""
    fence = completion.find(_FENCE)
    newline = completion.find("\n", fence + len(_FENCE)) if fence >= 0 else -1
    if newline < 0:
        return completion
    end = completion.find(_FENCE, newline + 1)
    return completion[newline + 1:] if end < 0 else completion[newline + 1:end]


class CodeTask(Task):
    """A task whose completions are programs, scored by running them with the tests."""

    @abc.abstractmethod
    def program(self, item: Item, completion: str) -> str:
        """The full program (the candidate code and the benchmark's tests) for ``item``."""

    def reward(self, item: Item, completion: str) -> float:
        raise ConfigError(f"task {self.name}: code is scored by running it (score_many with a "
                          f"program runner)")

    def answer_of(self, completion: str) -> str | None:
        """The code the completion gives (:func:`extract_code`)."""
        return extract_code(completion)

    def grade_many(self, pairs: Sequence[tuple[Item, str]],
                   run_programs: RunPrograms | None = None,
                   time_limit_s: float | None = ITEM_TIME_LIMIT_S) -> list[Grade]:
        """Whether each program passes its tests, run by ``run_programs`` under the runner's
        own limits (``time_limit_s`` is not used)."""
        if run_programs is None:
            raise ConfigError(f"task {self.name}: scoring code needs a program runner "
                              f"(dllm_jax.eval.harness.program_runner)")
        passed = run_programs([self.program(item, completion) for item, completion in pairs])
        return [Grade(solved=bool(ok), answer=self.answer_of(completion))
                for (_, completion), ok in zip(pairs, passed, strict=True)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class HumanEval(CodeTask):
    """OpenAI's HumanEval: complete a function from its stub; ``check(entry_point)`` tests it."""

    name: str = "humaneval"
    data: DataFiles = DataFiles(
        files=("humaneval.jsonl.gz", "HumanEval.jsonl.gz", "humaneval.jsonl"),
        required=("task_id", "prompt", "test", "entry_point"),
        hf=("openai/openai_humaneval", None, "test"))

    def prompt_text(self, item: Item) -> str:
        return HUMANEVAL_PROMPT.format(prompt=item["prompt"])

    def reference_completion(self, item: Item) -> str:
        return f"```python\n{item['prompt']}{item['canonical_solution']}```"

    def program(self, item: Item, completion: str) -> str:
        code = extract_code(completion)
        entry = item["entry_point"]
        # [^\S\n]: indentation within the line (\s* could run over many blank lines per "^").
        if not re.search(rf"^[^\S\n]*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
            code = item["prompt"] + code  # a function body continuing the stub
        else:
            code = item["prompt"] + "    pass\n\n" + code  # keep the stub's imports
        return f"{code}\n\n{item['test']}\n\ncheck({entry})\n"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MBPP(CodeTask):
    """Google's MBPP, test split (task ids 11..510): write code that passes ``test_list``."""

    name: str = "mbpp"
    data: DataFiles = DataFiles(files=("mbpp.jsonl",), required=("task_id", "text", "test_list"),
                                hf=("google-research-datasets/mbpp", "full", "test"),
                                id_range=(11, 510))

    def prompt_text(self, item: Item) -> str:
        return MBPP_PROMPT.format(text=item["text"], tests="\n".join(item["test_list"]))

    def reference_completion(self, item: Item) -> str:
        return f"```python\n{item['code']}\n```"

    def program(self, item: Item, completion: str) -> str:
        setup = item.get("test_setup_code") or ""
        tests = "\n".join(item["test_list"])
        return f"{setup}\n{extract_code(completion)}\n\n{tests}\n"
