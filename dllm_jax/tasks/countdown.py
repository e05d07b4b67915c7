"""Countdown with 3 numbers: ``"03,12,07>45="`` -> an expression such as ``"(3+12)*7"``.

Numbers and target are written zero-padded to fixed widths so every prompt has the same
length; the answer is any expression over ``+ - * /`` and parentheses that uses each number
exactly once (no unary minus, no other operators) and evaluates exactly to the target, where
every division must be exact (no remainder, as in the game). Expressions are parsed with
``ast`` and evaluated node by node over integers, never with ``eval``.

Instances are made from a random expression (its value is the target), so each is solvable.
The same class loads d1's Countdown test file (``{"input": "30,100,93", "output": "23"}``) and
scores its worded prompts with the same verifier: :meth:`Countdown.reward` judges the
expression in the completion's last ``<answer>`` block.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np

from dllm_jax.errors import ConfigError
from dllm_jax.tasks.base import FORMAT_TAIL, DataFiles, Item
from dllm_jax.tasks.common import (
    Example,
    Puzzle,
    check_fraction,
    family_part,
    fields_of,
    sample_examples,
)

OPS = "+-*/"
MAX_EXPR_CHARS = 64  # longer completions are rejected before parsing
_ALLOWED = re.compile(r"[0-9+\-*/() ]+")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}

PROMPT = (
    "Using each of the numbers {numbers} exactly once, with + - * / and parentheses as needed, "
    "write an arithmetic expression whose value is exactly {target}. Put only the expression "
    "in the answer, with no equals sign and no result (for the numbers [2, 3, 4] and the "
    "target 5 the answer would be 2*4-3).\n" + FORMAT_TAIL.format(answer="expression"))
# Shares of the family-level split (``number_split``): a family is the multiset of numbers, so
# no part shares a set of numbers with another, whatever the target.
NUMBER_SPLITS = {"sft": 0.4, "rl": 0.3, "val": 0.15, "test": 0.15}
D1_FILES = DataFiles(files=("countdown_cd3_test.jsonl", "countdown.jsonl"),
                     required=("input", "output"))


class _Reject(Exception):
    pass


def _apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0 or a % b:
        raise _Reject(f"inexact division {a}/{b}")
    return a // b


def _evaluate(node: ast.AST, used: list[int]) -> int:
    # The node type is checked before its children are evaluated, so ``9**9**9`` stops at once.
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        op = _BINOPS[type(node.op)]
        return _apply(op, _evaluate(node.left, used), _evaluate(node.right, used))
    raise _Reject(f"{type(node).__name__} is not allowed")


def eval_equation(expr: str) -> tuple[int, list[int]] | None:
    """``(value, numbers used)`` of an integer ``+ - * /`` expression, or None if it is not one
    (other characters or operators, unary minus, inexact division, too long, unparsable)."""
    if not isinstance(expr, str):
        return None
    expr = expr.strip()
    if not expr or len(expr) > MAX_EXPR_CHARS or not _ALLOWED.fullmatch(expr):
        return None
    try:
        tree = ast.parse(expr, mode="eval")
        used: list[int] = []
        return _evaluate(tree, used), used
    except (_Reject, SyntaxError, ValueError, RecursionError, MemoryError):
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Countdown(Puzzle):
    """Three numbers in ``[1, max_number]`` and a target in ``[1, max_target]``.

    Items (generated ``meta`` or loaded d1 records) hold ``numbers`` and ``target``.

    Attributes:
      max_number: largest number drawn (1..99).
      max_target: largest target kept (1..999).
      test_fraction: share of instances (by sorted numbers and target) reserved for test.
      format_score: reward for an ``<answer>`` block whose expression is wrong (d1 gives 0.1).
      number_split: None, or a part of the family-level split (``sft`` | ``rl`` | ``val`` |
        ``test``, :data:`NUMBER_SPLITS`): instances come only from number multisets of that
        part, and the ``split`` argument of :meth:`generate` is not used.
    """

    name: ClassVar[str] = "countdown"
    data: ClassVar[DataFiles] = D1_FILES
    num_numbers: ClassVar[int] = 3
    max_number: int = 30
    max_target: int = 99
    test_fraction: float = 0.1
    format_score: float = 0.0
    number_split: str | None = None

    def __post_init__(self) -> None:
        if self.number_split is not None and self.number_split not in NUMBER_SPLITS:
            raise ValueError(f"countdown.number_split must be one of {sorted(NUMBER_SPLITS)}, "
                             f"got {self.number_split!r}")
        if not isinstance(self.max_number, int) or not 1 <= self.max_number <= 99:
            raise ValueError(f"countdown.max_number must be an int in 1..99, got "
                             f"{self.max_number!r}")
        if not isinstance(self.max_target, int) or not 1 <= self.max_target <= 999:
            raise ValueError(f"countdown.max_target must be an int in 1..999, got "
                             f"{self.max_target!r}")
        check_fraction(self.test_fraction)
        if not 0.0 <= self.format_score < 1.0:
            raise ValueError(f"countdown.format_score must be in [0, 1), got {self.format_score}")

    @property
    def _widths(self) -> tuple[int, int]:
        return len(str(self.max_number)), len(str(self.max_target))

    @property
    def prompt_length(self) -> int:
        wn, wt = self._widths
        return self.num_numbers * (wn + 1) + wt + 1

    @property
    def answer_length(self) -> int:
        return self.num_numbers * self._widths[0] + (self.num_numbers - 1) + 2

    def make(self, numbers: list[int], target: int, answer: str) -> Example:
        """The example for ``numbers`` (in prompt order), ``target`` and a reference answer."""
        wn, wt = self._widths
        prompt = ",".join(f"{x:0{wn}d}" for x in numbers) + f">{target:0{wt}d}="
        return Example(prompt=prompt, answer=answer,
                       meta={"numbers": [int(x) for x in numbers], "target": int(target),
                             "answer_length": self.answer_length})

    def _draw(self, rng: np.random.Generator) -> tuple[list[int], int, str]:
        while True:
            a, b, c = (int(x) for x in rng.integers(1, self.max_number + 1, size=3))
            op1, op2 = (OPS[int(i)] for i in rng.integers(0, 4, size=2))
            try:
                if rng.integers(2):  # (a op1 b) op2 c
                    value, expr = _apply(op2, _apply(op1, a, b), c), f"({a}{op1}{b}){op2}{c}"
                else:  # a op1 (b op2 c)
                    value, expr = _apply(op1, a, _apply(op2, b, c)), f"{a}{op1}({b}{op2}{c})"
            except _Reject:
                continue
            if 1 <= value <= self.max_target:
                return [a, b, c], value, expr

    def generate(self, seed: int, n: int, split: str = "train") -> list[Example]:
        """``n`` distinct solvable instances of ``split``; the prompt lists the numbers in a
        random order. Train and test never share a (multiset of numbers, target)."""

        def draw(rng: np.random.Generator) -> tuple[str, Example]:
            while True:
                numbers, target, expr = self._draw(rng)
                family = ",".join(map(str, sorted(numbers)))
                if (self.number_split is None
                        or family_part(family, NUMBER_SPLITS) == self.number_split):
                    break
            shown = [numbers[int(i)] for i in rng.permutation(3)]
            return f"{family}>{target}", self.make(shown, target, expr)

        if self.number_split is not None:  # the family part is the split
            return sample_examples(draw, seed=seed, n=n, split="test", test_fraction=1 - 1e-12,
                                   name=f"{self.name} ({self.number_split} numbers)")
        return sample_examples(draw, seed=seed, n=n, split=split,
                               test_fraction=self.test_fraction, name=self.name)

    def verify(self, example: Example | Item, completion: str) -> float:
        """1.0 if ``completion`` uses each number exactly once and equals the target exactly."""
        try:
            meta = fields_of(example)
            numbers, target = [int(x) for x in meta["numbers"]], int(meta["target"])
        except (KeyError, TypeError, ValueError):
            return 0.0
        result = eval_equation(completion)
        if result is None:
            return 0.0
        value, used = result
        return 1.0 if value == target and Counter(used) == Counter(numbers) else 0.0

    def solution(self, item: Example | Item) -> str:
        """An expression :meth:`verify` accepts, found by :func:`solve_countdown` ("" if none)."""
        meta = fields_of(item)
        return solve_countdown(meta["numbers"], int(meta["target"])) or ""

    def from_record(self, record: Item) -> Item:
        """A d1 record (``input`` "a,b,c", ``output`` "t") with ``numbers`` and ``target``."""
        try:
            numbers = [int(x) for x in str(record["input"]).split(",")]
            return {**record, "numbers": numbers, "target": int(record["output"])}
        except ValueError as e:
            raise ConfigError(f"countdown record {record.get('id')}: bad input/output: "
                              f"{e}") from None

    def prompt_text(self, item: Item) -> str:
        return PROMPT.format(numbers=list(item["numbers"]), target=item["target"])

    def answer_of(self, completion: str) -> str | None:
        """The expression in the last ``<answer>`` block; a trailing ``= result`` is dropped."""
        answer = super().answer_of(completion)
        return None if answer is None else " ".join(answer.split("=", 1)[0].split())

    def reward(self, item: Item, completion: str) -> float:
        """1.0 for a correct expression in the last ``<answer>`` block, :attr:`format_score`
        for a wrong one, 0.0 without an answer block."""
        answer = self.answer_of(completion)
        if answer is None:
            return 0.0
        return 1.0 if self.verify(item, answer) == 1.0 else self.format_score

    def format_reward(self, completion: str) -> float:
        """1.0 if ``completion`` is a well-formed ``+ - * /`` expression over three numbers."""
        result = eval_equation(completion)
        return 1.0 if result is not None and len(result[1]) == self.num_numbers else 0.0


def solve_countdown(numbers: Sequence[int], target: int) -> str | None:
    """An expression that uses each of ``numbers`` once and equals ``target`` under the rules
    of :meth:`Countdown.verify` (every division exact), or None. Tries every order of the
    numbers, every bracketing and every operator."""
    for order in itertools.permutations(int(x) for x in numbers):
        for expr, value in _expressions(order):
            if value == target:
                return expr
    return None


def _expressions(numbers: tuple[int, ...]) -> Iterator[tuple[str, int]]:
    """``(text, value)`` of every expression over ``numbers`` in this order."""
    if len(numbers) == 1:
        yield str(numbers[0]), numbers[0]
        return
    for cut in range(1, len(numbers)):
        for (left, a), (right, b) in itertools.product(list(_expressions(numbers[:cut])),
                                                       list(_expressions(numbers[cut:]))):
            for op in OPS:
                try:
                    value = _apply(op, a, b)
                except _Reject:
                    continue
                yield f"{_bracket(left)}{op}{_bracket(right)}", value


def _bracket(expr: str) -> str:
    return expr if expr.isdigit() else f"({expr})"
