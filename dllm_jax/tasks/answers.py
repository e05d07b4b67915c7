"""Answer extraction (``\\boxed{}``, ``<answer>`` tags, GSM8K's ``####``, the last number), math
equivalence, and the GSM8K / MATH rewards, shared by evaluation and RL (pure Python).

Every reward takes the raw completion text and returns a float in [0, 1]; malformed completions
(empty, truncated tags, garbage, huge numbers, division by zero) score 0.0 and never raise.
The Countdown and Sudoku rewards belong to their tasks (``Countdown.reward``,
``Sudoku.reward`` in :mod:`dllm_jax.tasks`), which judge the answer with the same verifier as
their generated puzzles.

Math equivalence (:func:`math_equal`) conventions, checked by ``tests/test_eval_scoring.py``:
  * thousands separators are dropped (``1,000`` == ``1000``), but ``1,2`` stays a tuple;
  * a percentage equals both its number and its fraction (``50\\%`` == ``50`` == ``0.5``),
    which is what ``math-verify`` does and what MATH's graders accept;
  * ``x = 2`` equals ``2`` (the right-hand side of a single equation is compared);
  * decimals compare with a relative tolerance of 1e-6 (``math-verify`` rounds to 6 places);
  * symbolic forms compare with ``math-verify`` (``\\sqrt{8}`` == ``2\\sqrt{2}``,
    ``\\dfrac{3}{4}`` == ``3/4``); intervals must agree on open/closed ends.
"""

from __future__ import annotations

import math
import re
import threading
from fractions import Fraction

_MAX_ANSWER_CHARS = 400  # longer "answers" are garbage; bounds sympy time


def _last_group(pattern: re.Pattern[str], text: str) -> str | None:
    matches = pattern.findall(text)
    return matches[-1] if matches else None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces.

    Returns None when there is none or its braces never close (a truncated completion).
    """
    if not isinstance(text, str):
        return None
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, m.end()
        for j in range(start, len(text)):
            ch = text[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    best = text[start:j]
                    break
    if best is None:  # ``\boxed 5`` without braces
        m = _last_group(re.compile(r"\\boxed +([^\s$]+)"), text)
        best = m
    return None if best is None else best.strip()


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer_tag(text: str) -> str | None:
    """Stripped content of the last closed ``<answer>...</answer>``; None if there is none."""
    if not isinstance(text, str):
        return None
    got = _last_group(_ANSWER_TAG, text)
    return None if got is None else got.strip()


def extract_hash_answer(text: str) -> str | None:
    """GSM8K's final answer: what follows the last ``####``, commas and ``$`` removed."""
    if not isinstance(text, str) or "####" not in text:
        return None
    ans = text.rsplit("####", 1)[1].strip().splitlines()
    if not ans:
        return None
    return ans[0].replace(",", "").replace("$", "").strip() or None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` (``-1,234.5`` -> ``-1234.5``); None if there is none."""
    if not isinstance(text, str):
        return None
    got = _last_group(_NUMBER, text)
    if got is None:
        return None
    got = got.replace(",", "").rstrip(".")
    return got or None


def extract_final_answer(completion: str, number_fallback: bool = False) -> str | None:
    """The answer a d1-style completion commits to.

    Order: the last closed ``<answer>`` tag (its ``\\boxed{}`` content if it has one), else the
    last closed ``\\boxed{}`` anywhere, else (``number_fallback``, and only if the text has no
    unclosed ``<answer>`` / ``\\boxed``) the last number in the text.
    """
    if not isinstance(completion, str) or not completion.strip():
        return None
    tag = extract_answer_tag(completion)
    if tag is not None:
        boxed = extract_boxed(tag)
        return boxed if boxed is not None else tag
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed
    if "<answer>" in completion or re.search(r"\\(?:boxed|fbox)", completion):
        return None  # a truncated answer is no answer, whatever numbers precede it
    return extract_last_number(completion) if number_fallback else None


# ----------------------------------------------------------------------------- math equality

def _strip(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\(?:left|right|!|,|;|\s)", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s)
    s = s.replace("\\$", "").replace("^\\circ", "").replace("^{\\circ}", "")
    return s.strip().rstrip(".").strip()


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_PLAIN_NUM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$", re.IGNORECASE)
_FRAC = re.compile(r"^([+-]?)\\frac\{(\d+)\}\{(\d+)\}$|^([+-]?)(\d+)/(\d+)$")


def _as_numbers(s: str) -> list[float] | None:
    """Numeric readings of a plain number / fraction / percentage, or None if not numeric."""
    s = s.replace(" ", "")
    m = re.fullmatch(r"[a-zA-Z]\s*=\s*(.+)", s)
    if m:
        s = m.group(1)
    percent = s.endswith("\\%") or s.endswith("%")
    if percent:
        s = s[:-2] if s.endswith("\\%") else s[:-1]
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    value: float | None = None
    if len(s) <= 60 and _PLAIN_NUM.match(s):
        try:
            value = float(s)
        except (ValueError, OverflowError):
            return None
    else:
        m = _FRAC.match(s)
        if m:
            sign, a, b = (m.group(1), m.group(2), m.group(3)) if m.group(2) else (
                m.group(4), m.group(5), m.group(6))
            if len(a) > 30 or len(b) > 30 or int(b) == 0:
                return None
            value = float(Fraction(int(a), int(b))) * (-1 if sign == "-" else 1)
    if value is None or not math.isfinite(value):
        return None
    return [value, value / 100.0] if percent else [value]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def math_equal(pred: str | None, gold: str | None) -> bool:
    """Whether ``pred`` and ``gold`` denote the same mathematical answer (see module docs).

    Plain numbers, fractions and percentages are compared numerically; everything else goes
    to ``math-verify`` (symbolic, LaTeX-aware). Never raises; empty or overlong input is False.
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    p, g = _strip(pred), _strip(gold)
    if not p or not g or len(p) > _MAX_ANSWER_CHARS or len(g) > _MAX_ANSWER_CHARS:
        return False
    if p == g:
        return True
    pn, gn = _as_numbers(p), _as_numbers(g)
    if pn is not None and gn is not None:
        return any(_close(a, b) for a in pn for b in gn)
    return _math_verify_equal(p, g)


def _math_verify_equal(pred: str, gold: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError as e:  # a declared dependency; say so instead of scoring everything 0
        raise ImportError("math_equal needs the 'math-verify' package") from e
    # math-verify's timeouts use SIGALRM, which only works in the main thread.
    main = threading.current_thread() is threading.main_thread()
    t = 5 if main else None
    try:
        g = parse(f"${gold}$", parsing_timeout=t)
        q = parse(f"${pred}$", parsing_timeout=t)
        if not g or not q:
            return False
        return bool(verify(g, q, timeout_seconds=t))
    except Exception:  # noqa: BLE001 - a scorer must not crash on model garbage
        return False


# ----------------------------------------------------------------------------- rewards

def gsm8k_reward(completion: str, gold: str) -> float:
    """1.0 if the completion's final answer (tag, boxed, else last number) equals ``gold``.

    ``gold`` may be the bare answer or GSM8K's full ``answer`` field ending in ``#### x``.
    """
    g = extract_hash_answer(gold) if isinstance(gold, str) and "####" in gold else gold
    pred = extract_final_answer(completion, number_fallback=True)
    return 1.0 if pred is not None and math_equal(pred, g) else 0.0


def math_reward(completion: str, gold: str) -> float:
    """1.0 if the completion's boxed / tagged answer is equivalent to ``gold`` (MATH style).

    ``gold`` may be a bare answer or a solution containing ``\\boxed{}``.
    """
    if isinstance(gold, str) and "\\boxed" in gold:
        gold = extract_boxed(gold)
    pred = extract_final_answer(completion, number_fallback=False)
    return 1.0 if pred is not None and math_equal(pred, gold) else 0.0


_FORMAT = re.compile(r"\s*<reasoning>.*?</reasoning>\s*<answer>.*?</answer>\s*", re.DOTALL)


def format_reward(completion: str) -> float:
    """1.0 if the completion is exactly ``<reasoning>...</reasoning><answer>...</answer>``
    (whitespace around the blocks allowed), else 0.0."""
    if not isinstance(completion, str):
        return 0.0
    return 1.0 if _FORMAT.fullmatch(completion) else 0.0
