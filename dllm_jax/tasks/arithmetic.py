"""Multi-digit addition (SPEC section 8's calibration task) and Countdown."""

from __future__ import annotations

import ast
import dataclasses
import itertools
from fractions import Fraction

import numpy as np

from dllm_jax.tasks.base import Example, sample_split


@dataclasses.dataclass(frozen=True, kw_only=True)
class Addition:
    """``aaa+bbb=`` followed by the sum, least-significant digit first, zero-padded to
    ``digits + 1`` characters (e.g. ``123+989=`` -> ``2111``: 1112 reversed)."""

    digits: int = 3
    name: str = "addition"

    @property
    def answer_length(self) -> int:
        return self.digits + 1

    def _draw(self, rng: np.random.Generator) -> Example:
        hi = 10**self.digits
        a, b = int(rng.integers(0, hi)), int(rng.integers(0, hi))
        prompt = f"{a:0{self.digits}d}+{b:0{self.digits}d}="
        answer = f"{a + b:0{self.digits + 1}d}"[::-1]
        return Example(prompt, answer, {"a": a, "b": b})

    def generate(self, seed: int, n: int, split: str = "train") -> list[Example]:
        return sample_split(self._draw, seed, n, split)

    def verify(self, example: Example, completion: str) -> float:
        """1.0 for the exact reversed sum (surrounding spaces ignored), else 0."""
        total = example.meta["a"] + example.meta["b"]
        return float(completion.strip() == f"{total:0{self.digits + 1}d}"[::-1])


_ALLOWED = (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div,
            ast.UnaryOp, ast.USub)


def eval_equation(text: str, max_len: int = 64) -> tuple[Fraction, list[int]] | None:
    """Exact value and the integer literals of an arithmetic expression with + - * / and
    parentheses, or None for anything else (parsed with ``ast``, never ``eval``)."""
    text = text.strip()
    if not text or len(text) > max_len or any(c not in "0123456789+-*/() " for c in text):
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return None
    nums: list[int] = []

    def ev(node) -> Fraction:
        if not isinstance(node, _ALLOWED):
            raise ValueError
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, int) or isinstance(node.value, bool):
                raise ValueError
            nums.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp):
            raise ValueError  # negative literals are not allowed in Countdown
        left, right = ev(node.left), ev(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise ZeroDivisionError
        return left / right

    try:
        return ev(tree), nums
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Countdown:
    """Three numbers and a target: ``05,12,03>051=`` -> an equation using each number exactly
    once with + - * / (exact division) that evaluates to the target, e.g. ``(12-5)*3``... The
    reference answer is the generating expression; any correct equation scores 1."""

    max_number: int = 20
    name: str = "countdown"
    answer_length: int = 11  # longest equation "(nn+nn)*nn" is 10 characters, then EOS

    def _draw(self, rng: np.random.Generator) -> Example:
        while True:
            nums = [int(x) for x in rng.integers(1, self.max_number + 1, 3)]
            a, b, c = nums
            ops = rng.choice(["+", "-", "*"], 2)
            expr = (f"({a}{ops[0]}{b}){ops[1]}{c}" if rng.integers(2)
                    else f"{a}{ops[0]}({b}{ops[1]}{c})")
            res = eval_equation(expr)
            if res is None or res[0].denominator != 1 or not 0 < res[0] < 1000:
                continue
            target = int(res[0])
            prompt = ",".join(f"{x:02d}" for x in sorted(nums)) + f">{target:03d}="
            return Example(prompt, expr, {"numbers": sorted(nums), "target": target})

    def generate(self, seed: int, n: int, split: str = "train") -> list[Example]:
        return sample_split(self._draw, seed, n, split)

    def verify(self, example: Example, completion: str) -> float:
        res = eval_equation(completion)
        if res is None:
            return 0.0
        value, nums = res
        ok = sorted(nums) == sorted(example.meta["numbers"]) and value == example.meta["target"]
        return float(ok)

    def format_reward(self, completion: str) -> float:
        return float(eval_equation(completion) is not None)


def solve_countdown(numbers: list[int], target: int) -> str | None:
    """An equation reaching ``target`` with each number once (brute force), or None."""
    for a, b, c in itertools.permutations(numbers):
        for o1, o2 in itertools.product("+-*/", repeat=2):
            for expr in (f"({a}{o1}{b}){o2}{c}", f"{a}{o1}({b}{o2}{c})"):
                res = eval_equation(expr)
                if res is not None and res[0] == target:
                    return expr
    return None
