"""Countdown with 3 numbers: ``"03,12,07>45="`` -> an expression such as ``"(3+12)*7"``.

Numbers and target are written zero-padded to fixed widths so every prompt has the same
length; the answer is any expression over ``+ - * /`` and parentheses that uses each number
exactly once (no unary minus, no other operators) and evaluates exactly to the target, where
every division must be exact (no remainder, as in the game). Expressions are parsed with
``ast`` and evaluated node by node over integers, never with ``eval``.

Instances are made from a random expression (its value is the target), so each is solvable.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import re
from collections import Counter
from typing import Any, ClassVar

import numpy as np

from dllm_jax.tasks.common import Example, check_fraction, sample_examples

OPS = "+-*/"
MAX_EXPR_CHARS = 64  # longer completions are rejected before parsing
_ALLOWED = re.compile(r"[0-9+\-*/() ]+")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


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
class Countdown:
    """Three numbers in ``[1, max_number]`` and a target in ``[1, max_target]``.

    Attributes:
      max_number: largest number drawn (1..99).
      max_target: largest target kept (1..999).
      test_fraction: share of instances (by sorted numbers and target) reserved for test.
    """

    name: ClassVar[str] = "countdown"
    num_numbers: ClassVar[int] = 3
    max_number: int = 30
    max_target: int = 99
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.max_number, int) or not 1 <= self.max_number <= 99:
            raise ValueError(f"countdown.max_number must be an int in 1..99, got "
                             f"{self.max_number!r}")
        if not isinstance(self.max_target, int) or not 1 <= self.max_target <= 999:
            raise ValueError(f"countdown.max_target must be an int in 1..999, got "
                             f"{self.max_target!r}")
        check_fraction(self.test_fraction)

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
            numbers, target, expr = self._draw(rng)
            shown = [numbers[int(i)] for i in rng.permutation(3)]
            identity = ",".join(map(str, sorted(numbers))) + f">{target}"
            return identity, self.make(shown, target, expr)

        return sample_examples(draw, seed=seed, n=n, split=split,
                               test_fraction=self.test_fraction, name=self.name)

    def verify(self, example: Example | dict[str, Any], completion: str) -> float:
        """1.0 if ``completion`` uses each number exactly once and equals the target exactly."""
        try:
            meta = example.meta if isinstance(example, Example) else example
            numbers, target = [int(x) for x in meta["numbers"]], int(meta["target"])
        except (KeyError, TypeError, ValueError):
            return 0.0
        result = eval_equation(completion)
        if result is None:
            return 0.0
        value, used = result
        return 1.0 if value == target and Counter(used) == Counter(numbers) else 0.0

    def format_reward(self, completion: str) -> float:
        """1.0 if ``completion`` is a well-formed ``+ - * /`` expression over three numbers."""
        result = eval_equation(completion)
        return 1.0 if result is not None and len(result[1]) == self.num_numbers else 0.0


def solve_countdown(numbers: list[int], target: int) -> str | None:
    """An expression reaching ``target`` with each of three numbers once, or None (tries
    every order, operator pair and bracketing)."""
    for a, b, c in itertools.permutations(int(x) for x in numbers):
        for o1, o2 in itertools.product(OPS, repeat=2):
            for expr in (f"({a}{o1}{b}){o2}{c}", f"{a}{o1}({b}{o2}{c})"):
                res = eval_equation(expr)
                if res is not None and res[0] == target:
                    return expr
    return None
