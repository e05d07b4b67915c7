"""Answer extraction (``\\boxed{}``, ``<answer>`` tags, GSM8K's ``####``, the last number), math
equivalence, and the GSM8K / MATH rewards, shared by evaluation and RL (pure Python).

Every reward takes the raw completion text and returns a float in [0, 1]; malformed completions
(empty, truncated tags, garbage, huge numbers, division by zero) score 0.0 and never raise.
The Countdown and Sudoku rewards belong to their tasks (``Countdown.reward``,
``Sudoku.reward`` in :mod:`dllm_jax.tasks`), which judge the answer with the same verifier as
their generated puzzles.

Extraction runs in time linear in the completion (scans, never backtracking regexes), so a
hostile completion (megabytes of unclosed ``\\boxed{`` or ``<answer>``, digits, nested braces)
costs a fraction of a second. An answer longer than :data:`MAX_ANSWER_CHARS` is garbage and
extracts as None, and a run of number characters longer than :data:`MAX_NUMBER_CHARS` is not
a number.

Math equivalence (:func:`math_equal`) conventions, checked by ``tests/eval/test_eval_scoring.py``:
  * thousands separators are dropped (``1,000`` == ``1000``), but ``1,2`` stays a tuple;
  * a percentage equals both its number and its fraction (``50\\%`` == ``50`` == ``0.5``),
    which is what ``math-verify`` does and what MATH's graders accept;
  * ``x = 2`` equals ``2`` (the right-hand side of a single equation is compared);
  * decimals compare with a relative tolerance of 1e-6 (``math-verify`` rounds to 6 places);
  * symbolic forms compare with ``math-verify`` (``\\sqrt{8}`` == ``2\\sqrt{2}``,
    ``\\dfrac{3}{4}`` == ``3/4``); intervals must agree on open/closed ends.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from fractions import Fraction
from typing import Any

import numpy as np

from dllm_jax.tasks.limits import time_limit_active

MAX_ANSWER_CHARS = 1_000  # a longer extracted answer is garbage: it extracts as None
MAX_NUMBER_CHARS = 100  # a longer run of digits, ",", "." and "-" is not a number
_MAX_MATH_CHARS = 400  # longest stripped answer given to math equivalence; bounds sympy time

# math-verify warns on each of its timeouts and once when they are off (under a scoring time
# limit); scoring reports what it needs itself.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_OPEN_TAG, _CLOSE_TAG = "<answer>", "</answer>"
_BOX_NAMES = ("\\boxed", "\\fbox")
_IS_SPACE = np.zeros(256, bool)
_IS_SPACE[list(b" \t\n\r\f\v")] = True  # ASCII whitespace, by byte value
_BOXED_WORD = re.compile(r"\\boxed +([^\s$]+)")


def _bounded(answer: str | None) -> str | None:
    """``answer`` stripped, or None when there is none or it is longer than MAX_ANSWER_CHARS."""
    if answer is None:
        return None
    answer = answer.strip()
    return answer if len(answer) <= MAX_ANSWER_CHARS else None


def _box_openers(data: np.ndarray) -> np.ndarray:
    """Byte offsets of the ``{`` that open a ``\\boxed`` / ``\\fbox`` in UTF-8 ``data``
    (ASCII whitespace may stand between the name and the brace)."""
    before = data[:-1]
    spaced = _IS_SPACE[before]
    # Candidates: a brace after a name's last letter or after whitespace.
    braces = np.flatnonzero((data[1:] == ord("{"))
                            & ((before == ord("d")) | (before == ord("x")) | spaced)) + 1
    last = braces - 1  # the byte before each brace, or after whitespace the last other byte
    after_space = spaced[last]
    if after_space.any():
        solid = np.flatnonzero(~spaced)
        last[after_space] = np.concatenate([[-1], solid])[
            np.searchsorted(solid, last[after_space])]
    found = np.zeros(len(last), bool)
    for name in _BOX_NAMES:
        match = last >= len(name) - 1
        for back, ch in enumerate(reversed(name.encode())):
            match &= data[np.maximum(last - back, 0)] == ch
        found |= match
    return braces[found]


def _last_closed_box(text: str) -> str | None:
    """Content of the last ``\\boxed{`` / ``\\fbox{`` whose braces close (nested braces count,
    escaped ones too), unbounded; None if none closes. Linear: brace depths by prefix sums."""
    if "}" not in text or not any(name in text for name in _BOX_NAMES):
        return None
    data = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
    opens = _box_openers(data)
    opens = opens[opens + 1 < len(data)]
    if not len(opens):
        return None
    step = (data == ord("{")).view(np.int8) - (data == ord("}")).view(np.int8)
    depth = np.cumsum(step, dtype=np.int32)  # brace depth after each byte
    lowest_after = np.minimum.accumulate(depth[::-1])[::-1]  # min of depth[i:]
    closed = opens[lowest_after[opens + 1] < depth[opens]]  # depth drops below the box's
    if not len(closed):
        return None
    start = int(closed[-1]) + 1
    end = start + int(np.argmax(depth[start:] < depth[start - 1]))  # the matching "}"
    return data[start:end].tobytes().decode("utf-8", "surrogatepass")


def _last_box(text: str) -> str | None:
    """The last closed box's content, else the word after the last ``\\boxed`` written without
    braces (``\\boxed 5``); unbounded."""
    closed = _last_closed_box(text)
    if closed is not None:
        return closed
    m = _BOXED_WORD.match(text, max(text.rfind("\\boxed"), 0))
    return m.group(1) if m else None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) whose braces close, stripped;
    ``\\boxed 5`` without braces gives ``5`` when no braced box closes.

    Nested braces belong to the box (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); of several
    boxes the closed one that starts last wins (so an inner box beats the box around it, and a
    truncated box after a closed one is ignored). Returns None when no box closes (a truncated
    completion) or the content is longer than :data:`MAX_ANSWER_CHARS`.
    """
    return _bounded(_last_box(text)) if isinstance(text, str) else None


def _last_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` as the regex ``<answer>(.*?)</answer>``
    finds it scanning left to right (the block closes at the first ``</answer>`` after its
    ``<answer>``), unbounded; found with a fixed number of string searches."""
    close = text.rfind(_CLOSE_TAG)
    last_open = text.rfind(_OPEN_TAG, 0, close) if close >= 0 else -1
    if last_open < 0:
        return None
    # No block spans a "</answer>", so the last block opens at the first "<answer>" after the
    # "</answer>" that precedes the last usable "<answer>".
    previous = text.rfind(_CLOSE_TAG, 0, last_open)
    start = text.find(_OPEN_TAG, 0 if previous < 0 else previous + len(_CLOSE_TAG))
    start += len(_OPEN_TAG)
    return text[start:text.find(_CLOSE_TAG, start)]


def extract_answer_tag(text: str) -> str | None:
    """Stripped content of the last closed ``<answer>...</answer>``; None if there is none or it
    is longer than :data:`MAX_ANSWER_CHARS`.

    A block ends at the first ``</answer>`` after its ``<answer>``
    (``<answer>a<answer>b</answer>`` -> ``a<answer>b``).
    """
    return _bounded(_last_answer_tag(text)) if isinstance(text, str) else None


def extract_hash_answer(text: str) -> str | None:
    """GSM8K's final answer: what follows the last ``####``, commas and ``$`` removed."""
    if not isinstance(text, str) or "####" not in text:
        return None
    ans = text.rsplit("####", 1)[1].strip().splitlines()
    if not ans:
        return None
    return ans[0].replace(",", "").replace("$", "").strip() or None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_DIGIT = re.compile(r"\d")
_NUMBER_RUN = re.compile(rf"[\d,.\-]{{0,{MAX_NUMBER_CHARS + 1}}}")


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` (``-1,234.5`` -> ``-1234.5``); None if there is none or the
    run of digits, ``,``, ``.`` and ``-`` it stands in is longer than :data:`MAX_NUMBER_CHARS`.

    Numbers are read left to right (``1.2.3`` reads as ``1.2`` then ``.3``); only the run
    around the last digit is read, found by scanning the reversed text.
    """
    if not isinstance(text, str):
        return None
    backwards = text[::-1]
    digit = _DIGIT.search(backwards)
    if digit is None:
        return None
    run = _NUMBER_RUN.match(backwards, digit.start()).end() - digit.start()
    if run > MAX_NUMBER_CHARS:
        return None
    end = len(text) - digit.start()  # just past the last digit
    # No number crosses the run's start, so reading from there reads as from the beginning.
    return _NUMBER.findall(text, end - run, end)[-1].replace(",", "")


def extract_final_answer(completion: str, number_fallback: bool = False) -> str | None:
    """The answer a d1-style completion commits to.

    Order: the last closed ``<answer>`` tag (its ``\\boxed{}`` content if it has one), else the
    last closed ``\\boxed{}`` anywhere, else (``number_fallback``, and only if the text has no
    unclosed ``<answer>`` / ``\\boxed``) the last number in the text. None when the answer found
    is longer than :data:`MAX_ANSWER_CHARS`.
    """
    if not isinstance(completion, str) or not completion.strip():
        return None
    tag = _last_answer_tag(completion)
    if tag is not None:
        boxed = _last_box(tag)
        return _bounded(boxed if boxed is not None else tag)
    boxed = _last_box(completion)
    if boxed is not None:
        return _bounded(boxed)
    if _OPEN_TAG in completion or any(name in completion for name in _BOX_NAMES):
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
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    p, g = _strip(pred), _strip(gold)
    if not p or not g or len(p) > _MAX_MATH_CHARS or len(g) > _MAX_MATH_CHARS:
        return False
    if p == g:
        return True
    pn, gn = _as_numbers(p), _as_numbers(g)
    if pn is not None and gn is not None:
        return any(_close(a, b) for a in pn for b in gn)
    return _math_verify_equal(p, g)


@functools.cache
def _math_verify() -> Any:
    """The ``math_verify`` module, imported with its LaTeX parser built (the first use costs
    about a second; :func:`warm_up_math_verify` pays it outside any scoring time limit)."""
    try:
        import math_verify
    except ImportError as e:  # a declared dependency; say so instead of scoring everything 0
        raise ImportError("math_equal needs the 'math-verify' package") from e
    math_verify.parse("$1$", parsing_timeout=None)
    return math_verify


def warm_up_math_verify() -> None:
    """Imports ``math-verify`` and builds its parser now rather than in the first check."""
    _math_verify()


def _math_verify_equal(pred: str, gold: str) -> bool:
    mv = _math_verify()
    # math-verify's timeouts use SIGALRM, which only works in the main thread, and would cancel
    # the alarm of a scoring time limit (which then bounds math-verify instead).
    main = threading.current_thread() is threading.main_thread()
    t = 5 if main and not time_limit_active() else None
    try:
        g = mv.parse(f"${gold}$", parsing_timeout=t)
        q = mv.parse(f"${pred}$", parsing_timeout=t)
        if not g or not q:
            return False
        return bool(mv.verify(g, q, timeout_seconds=t))
    except Exception:  # noqa: BLE001 - a scorer must not crash on model garbage
        return False


# ----------------------------------------------------------------------------- rewards

def gsm8k_reward(completion: str, gold: str | None) -> float:
    """1.0 if the completion's final answer (tag, boxed, else last number) equals ``gold``.

    ``gold`` may be the bare answer or GSM8K's full ``answer`` field ending in ``#### x``.
    """
    g = extract_hash_answer(gold) if isinstance(gold, str) and "####" in gold else gold
    pred = extract_final_answer(completion, number_fallback=True)
    return 1.0 if pred is not None and math_equal(pred, g) else 0.0


def math_reward(completion: str, gold: str | None) -> float:
    """1.0 if the completion's boxed / tagged answer is equivalent to ``gold`` (MATH style).

    ``gold`` may be a bare answer or a solution containing ``\\boxed{}``.
    """
    if isinstance(gold, str) and "\\boxed" in gold:
        gold = extract_boxed(gold)
    pred = extract_final_answer(completion, number_fallback=False)
    return 1.0 if pred is not None and math_equal(pred, gold) else 0.0


_REASONING_THEN_ANSWER = re.compile(r"</reasoning>\s*<answer>")


def format_reward(completion: str) -> float:
    """1.0 if the completion is exactly ``<reasoning>...</reasoning><answer>...</answer>``
    (whitespace around the blocks allowed), else 0.0.

    The same test as the regex ``\\s*<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>\\s*``
    (DOTALL) matching the whole text, made in linear time: the stripped text opens with
    ``<reasoning>``, closes with ``</answer>``, and holds ``</reasoning>`` then ``<answer>``
    (whitespace between) in between.
    """
    if not isinstance(completion, str):
        return 0.0
    text = completion.strip()
    if not (text.startswith("<reasoning>") and text.endswith(_CLOSE_TAG)):
        return 0.0
    inside = _REASONING_THEN_ANSWER.search(text, len("<reasoning>"), len(text) - len(_CLOSE_TAG))
    return 1.0 if inside else 0.0
