"""Scoring on the real benchmark files: reference solutions score 100%, shuffled ones ~0%;
hand-checked math equivalences; reward functions on malformed output; task loading/prompts.

Data comes from ``../shared/data`` (skipped when absent). Code tasks use their first 20 items
(HumanEval/0..19, MBPP 11..30) to keep the sandbox time down; the other tasks use every item.
"""

import random
import re
import signal
import threading
import time

import pytest

from dllm_jax.errors import ConfigError
from dllm_jax.eval.harness import program_runner
from dllm_jax.tasks import TASKS, CodeTask, extract_code, get_task, solve_countdown
from dllm_jax.tasks import answers as rewards
from dllm_jax.tasks.answers import math_equal
from dllm_jax.tasks.base import Grade
from dllm_jax.tasks.limits import ScoringTimeout, call_with_time_limit
from dllm_jax.tasks.maths import MathProblems, math_files

CODE_SUBSET = 20
SHUFFLED_BOUND = 0.03  # measured: gsm8k 1.1%, math500 1.2%, sudoku 0.6% (repeated answers)
BENCHMARKS = sorted(name for name, task in TASKS.items() if task.data is not None)
RUN = program_runner()


def _items(task, data_dir):
    items = task.load(data_dir)
    return items[:CODE_SUBSET] if isinstance(task, CodeTask) else items


def test_benchmark_names():
    assert BENCHMARKS == ["aime24", "aime25", "countdown", "gsm8k", "humaneval", "math500",
                          "mbpp", "sudoku"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_reference_solutions_score_100_and_shuffled_near_0(name, data_dir):
    task = get_task(name)
    items = _items(task, data_dir)
    refs = [task.reference_completion(it) for it in items]
    ok = task.score_many(list(zip(items, refs, strict=True)), RUN)
    assert [it["id"] for it, o in zip(items, ok, strict=True) if not o] == []
    # shuffled: a fixed permutation without fixed points (shuffle, then rotate by one)
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    src = order[1:] + order[:1]
    dst_of = dict(zip(order, src, strict=True))
    shuffled = task.score_many([(items[i], refs[dst_of[i]]) for i in range(len(items))], RUN)
    assert sum(shuffled) / len(items) <= SHUFFLED_BOUND


def test_dataset_ids_and_sizes(data_dir):
    assert [it["id"] for it in get_task("humaneval").load(data_dir, limit=2)] == [
        "HumanEval/0", "HumanEval/1"]
    mbpp = get_task("mbpp").load(data_dir)
    assert len(mbpp) == 500 and mbpp[0]["id"] == 11 and mbpp[-1]["id"] == 510
    gsm = get_task("gsm8k").load(data_dir)
    assert len(gsm) == 1319 and [it["id"] for it in gsm[:3]] == [0, 1, 2]
    sudoku = get_task("sudoku").load(data_dir, limit=3)
    assert [it["id"] for it in sudoku] == [0, 1, 2] and sudoku[0]["Puzzle"] == "3102200002100320"
    assert len(get_task("aime25").load(data_dir)) == 30


def test_code_body_completion_and_fences(data_dir):
    he = get_task("humaneval").load(data_dir, limit=3)
    for it in he:  # a bare function body continues the stub
        assert get_task("humaneval").score(it, it["canonical_solution"], RUN)
        assert not get_task("humaneval").score(it, "    return None\n", RUN)
    with pytest.raises(ConfigError, match="program runner"):
        get_task("humaneval").score(he[0], he[0]["canonical_solution"])
    assert extract_code("text\n```python\nx = 1\n```\nmore") == "x = 1\n"
    assert extract_code("```\ny = 2\n") == "y = 2\n"  # unclosed fence runs to the end
    assert extract_code("z = 3") == "z = 3"


# (pred, gold): hand-checked. Convention: a percentage equals both its number and its
# fraction; thousands separators are dropped; "x = 2" is compared by its right-hand side.
EQUIVALENT = [
    ("0.5", "\\frac{1}{2}"), ("\\frac12", "0.5"), ("3/4", "\\dfrac{3}{4}"),
    ("0.75", "\\tfrac{3}{4}"), ("1000", "1,000"), ("1234567.5", "1,234,567.5"),
    ("0.5", "50\\%"), ("50", "50\\%"), ("50", "50%"), ("2", "x=2"), ("x = 2", "2"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("[1, 2)", "[1,2)"), ("(-\\infty,3]", "(-\\infty, 3]"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"), ("10.0", "10"),
    ("18", "\\$18"), ("18.00", "18"), ("C", "\\text{(C)}"), ("90", "90^\\circ"),
    ("\\frac{1}{2}\\sqrt{3}", "\\frac{\\sqrt{3}}{2}"), ("\\pi \\cdot 2", "2\\pi"),
    ("(x+1)^2", "x^2+2x+1"), ("\\{2,1\\}", "\\{1,2\\}"), ("2/4", "1/2"), ("5.", "5"),
    ("1e3", "1000"), ("\\frac{1}{8}", "0.125"),
]
NOT_EQUIVALENT = [
    ("2", "1"), ("0.55", "0.5"), ("[1,2]", "[1,2)"), ("(2,1)", "(1,2)"), ("3", "\\sqrt{8}"),
    ("1", "1,000"), ("3", "x=2"), ("\\frac{1}{3}", "\\frac{1}{2}"), ("-2", "2"), ("", "2"),
    ("1001", "1000"), ("3.14", "\\pi"), ("12", "1,2"), ("5x", "5"), ("10^{101}", "10^{100}"),
    ("0.5", "5\\%"), (None, "2"), ("9" * 5000, "18"),
]


@pytest.mark.parametrize("pred,gold", EQUIVALENT)
def test_math_equivalent(pred, gold):
    assert math_equal(pred, gold)
    assert math_equal(gold, pred)


@pytest.mark.parametrize("pred,gold", NOT_EQUIVALENT)
def test_math_not_equivalent(pred, gold):
    assert not math_equal(pred, gold)


def test_extractors():
    assert rewards.extract_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{3}") == "3"
    assert rewards.extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert rewards.extract_boxed("\\boxed{12") is None
    assert rewards.extract_answer_tag("<answer>1</answer> <answer> 2 </answer>") == "2"
    assert rewards.extract_answer_tag("<answer>2") is None
    assert rewards.extract_hash_answer("work\n#### 1,234") == "1234"
    assert rewards.extract_last_number("a 1,234.5 then -7.") == "-7"
    assert rewards.extract_final_answer("<answer>\\boxed{4}</answer>") == "4"
    assert rewards.extract_final_answer("so 41 or 42", number_fallback=True) == "42"
    assert rewards.extract_final_answer("so 41 or 42") is None
    assert rewards.extract_final_answer("41 <answer>42", number_fallback=True) is None


MALFORMED = ["", "<answer>", "<answer>18", "</answer>18<answer>", "garbage \u2603 \x00",
             "<answer>" + "9" * 5000 + "</answer>", "\\boxed{", "<answer>\\boxed{1/0}</answer>",
             "<answer>1e999999</answer>", "<answer>" + "(" * 500 + "1" + ")" * 500 + "</answer>",
             "<answer>" + "+-" * 3000 + "</answer>", None]


@pytest.mark.parametrize("completion", MALFORMED)
def test_rewards_malformed_give_zero(completion):
    assert rewards.gsm8k_reward(completion, "18") == 0.0
    assert rewards.math_reward(completion, "\\frac{1}{2}") == 0.0
    assert get_task("countdown").reward({"numbers": [30, 100, 93], "target": 23},
                                        completion) == 0.0
    assert get_task("sudoku").reward({"puzzle": "3102200002100320",
                                      "solution": "3142243142131324"}, completion) == 0.0
    assert rewards.format_reward(completion) == 0.0


def test_countdown_reward():
    item = {"numbers": [30, 100, 93], "target": 23}

    def r(expr, **spec):
        return get_task("countdown", **spec).reward(
            item, f"<reasoning>x</reasoning><answer>{expr}</answer>")

    for good in ["30-(100-93)", "30-100+93", " (93 + 30) - 100 ", "30 - 100 + 93 = 23"]:
        assert r(good) == 1.0, good
    for bad in ["100-93+30", "30-7", "30-100+93+0", "30-100+93+30-30", "93/(100-100)+30",
                "30.0-100+93", "__import__('os').system('echo')", "30**2", "", "2 3 4"]:
        assert r(bad) == 0.0, bad
    assert r("100-93+30", format_score=0.1) == 0.1  # d1's partial credit for a wrong answer
    assert get_task("countdown", format_score=0.1).reward(item, "30-100+93") == 0.0  # no tag
    assert solve_countdown([2, 3, 4], 5) is not None
    assert solve_countdown([1, 1, 1], 100) is None


def test_sudoku_reward_d1_semantics(tmp_path):
    puzzle, sol = "3102200002100320", "3142243142131324"
    empty = [i for i, ch in enumerate(puzzle) if ch == "0"]
    sudoku = get_task("sudoku")

    def r(ans, item=None):
        return sudoku.reward(item or {"puzzle": puzzle, "solution": sol},
                             f"<answer>\n{ans}\n</answer>")

    assert r(sol) == 1.0
    assert r("3142\n2431\n4213\n1324") == 1.0  # layout ignored, digits in order
    assert r(puzzle) == 0.0  # given cells are not scored
    half = list(puzzle)
    for i in empty[: len(empty) // 2]:
        half[i] = sol[i]
    assert r("".join(half)) == pytest.approx((len(empty) // 2) / len(empty))
    # truncated: padded with 0 (d1), so only the empty cells among the first 8 count
    assert r(sol[:8]) == pytest.approx(sum(i < 8 for i in empty) / len(empty))
    assert r(sol + "1111") == 1.0  # extra digits truncated
    assert r(sol, {"puzzle": sol, "solution": sol}) == 0.0  # nothing empty
    bad = tmp_path / "sudoku.csv"  # a malformed grid is refused when the file is read
    bad.write_text(f"Puzzle,Solution\n{puzzle},{sol}\n123,{sol}\n")
    with pytest.raises(ConfigError, match="sudoku record 1: Puzzle must be 16 digits"):
        sudoku.load(bad)


def test_format_reward():
    assert rewards.format_reward("<reasoning>\nhm\n</reasoning>\n<answer>\n4\n</answer>\n") == 1
    assert rewards.format_reward("<answer>4</answer>") == 0.0
    assert rewards.format_reward("<reasoning>a</reasoning><answer>4</answer> and more") == 0.0
    assert rewards.format_reward("<reasoning>a</reasoning><answer>4") == 0.0


def test_prompts_and_chat_template(data_dir, shared_dir):
    transformers = pytest.importorskip("transformers")
    gsm = get_task("gsm8k")
    item = gsm.load(data_dir, limit=1)[0]
    text = gsm.prompt_text(item)
    assert "<reasoning>" in text and "<answer>" in text and item["question"] in text
    qwen = shared_dir / "tokenizers" / "qwen2.5"
    if not qwen.is_dir():
        pytest.skip("qwen2.5 tokenizer not present")
    tok = transformers.AutoTokenizer.from_pretrained(str(qwen))
    assert tok.chat_template
    decoded = tok.decode(gsm.encode_prompt(tok, item))
    assert "<|im_start|>user" in decoded and decoded.rstrip().endswith("<|im_start|>assistant")
    assert item["question"] in decoded
    gpt2 = transformers.GPT2TokenizerFast.from_pretrained(str(shared_dir / "tokenizers/gpt2"))
    he = get_task("humaneval")
    he_item = he.load(data_dir, limit=1)[0]
    assert gpt2.decode(he.encode_prompt(gpt2, he_item)) == he.prompt_text(he_item)
    mb = get_task("mbpp")
    mb_text = mb.prompt_text(mb.load(data_dir, limit=1)[0])
    assert "assert remove_Occ" in mb_text
    cd = get_task("countdown")
    assert "[30, 100, 93]" in cd.prompt_text(cd.load(data_dir, limit=1)[0])


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'gsm9k'"):
        get_task("gsm9k")
    with pytest.raises(ConfigError, match="does not exist"):
        get_task("gsm8k").load(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match=r"none of \['gsm8k_test.jsonl'"):
        get_task("gsm8k").load(tmp_path)
    with pytest.raises(ConfigError, match="countdown has no default dataset"):
        get_task("countdown").load()
    with pytest.raises(ConfigError, match="addition has no data files"):
        get_task("addition").load()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(ConfigError, match=r"has no field 'answer' \(record 0\)"):
        get_task("gsm8k").load(bad)


# ----------------------------------------------------------------------------- hostile output

def test_extractor_hand_cases():
    boxed = rewards.extract_boxed
    assert boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"  # nested braces belong to the box
    assert boxed("\\boxed{1} and \\boxed{2}") == "2"  # the last box wins
    assert boxed("\\boxed{\\boxed{1} + 2}") == "1"  # the box that starts last is the inner one
    assert boxed("\\boxed{1} then \\boxed{2") == "1"  # a truncated last box is skipped
    assert boxed("\\boxed{a{b}c}") == "a{b}c" and boxed("\\boxed{{}") is None
    assert boxed("\\fbox{7}") == "7" and boxed("\\boxed \n {8}") == "8"
    assert boxed("x \\boxed 5$ y") == "5" and boxed("\\boxed 5 then \\boxed{") is None
    assert boxed("\\boxed{ \u00e9t\u00e9 }") == "\u00e9t\u00e9"  # offsets survive UTF-8
    assert boxed("\\boxed{" + "1" * 1001 + "}") is None  # longer than MAX_ANSWER_CHARS
    assert boxed("\\boxed{" + "1" * 1000 + "}") == "1" * 1000
    tag = rewards.extract_answer_tag
    assert tag("<answer>a<answer>b</answer>") == "a<answer>b"  # a block ends at its first close
    assert tag("<answer>a</answer></answer>") == "a"
    assert tag("<answer>a</answer> <answer>b") == "a"
    assert tag("<answer>" + "x" * 1001 + "</answer>") is None
    number = rewards.extract_last_number
    assert number("1.2.3") == ".3" and number("on 2023-10-05") == "-05"
    assert number("12,") == "12" and number("no digits") is None
    assert number("x " + "1" * 100) == "1" * 100 and number("x " + "1" * 101) is None
    final = rewards.extract_final_answer
    assert final("<answer>so \\boxed{3}</answer> \\boxed{4}") == "3"  # the tag comes first
    assert final("<answer>" + "w" * 2000 + " \\boxed{5}</answer>") == "5"  # a long tag's box
    assert final("\\boxed{" + "{" * 5 + "}" * 5, number_fallback=True) is None


def _reference_boxed(text):
    """The last closed box, by trying every opener with a brace counter (quadratic)."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)[ \t\n]*\{", text):
        depth = 1
        for j in range(m.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                best = text[m.end():j]
                break
    if best is None:
        m = re.match(r"\\boxed +([^\s$]+)", text[max(text.rfind("\\boxed"), 0):])
        best = m.group(1) if m else None
    return None if best is None else best.strip()


def test_linear_extractors_agree_with_the_regexes():
    """On short random strings the scanners give what the plain regexes give."""
    rng = random.Random(0)
    tag_re = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
    number_re = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
    format_re = re.compile(r"\s*<reasoning>.*?</reasoning>\s*<answer>.*?</answer>\s*", re.DOTALL)
    code_re = re.compile(r"```(?:python|py|Python)?[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
    pieces = ["<answer>", "</answer>", "<reasoning>", "</reasoning>", "\\boxed", "\\fbox", "{",
              "}", " ", "\n", "1", ",", ".", "-", "$", "x", "```", "py"]
    for _ in range(20000):
        s = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        tags = tag_re.findall(s)
        assert rewards.extract_answer_tag(s) == (tags[-1].strip() if tags else None), s
        numbers = number_re.findall(s)
        assert rewards.extract_last_number(s) == (
            numbers[-1].replace(",", "") if numbers else None), s
        assert rewards.extract_boxed(s) == _reference_boxed(s), s
        assert rewards.format_reward(s) == (1.0 if format_re.fullmatch(s) else 0.0), s
        code = code_re.search(s)
        assert extract_code(s) == (code.group(1) if code else s), s


MB = 10_000_000
HOSTILE = {
    "repeated boxed": "\\boxed{" * (MB // 7),
    "repeated answer": "<answer>" * (MB // 8),
    "digits": "7" * MB,
    "nested braces": "\\boxed{" + "{" * (MB // 2) + "}" * (MB // 2),
    "boxed pairs": "\\boxed{{}" * (MB // 9),
    "huge tag": "<answer>\\boxed{" + "{" * (MB // 2) + "}" * (MB // 2 + 1) + "</answer>",
}
# Which "hostile text + reference completion" still score: the reference's <answer> block is the
# last one, except after repeated "<answer>", where the last block opens at the first unclosed
# tag and runs megabytes (no answer), unless a box inside it holds the answer (MATH style).
SOLVED_AFTER = {"repeated answer": {"math500"}}


@pytest.mark.parametrize("name", ["gsm8k", "math500", "countdown", "sudoku"])
def test_hostile_completions_score_within_two_seconds(name, data_dir):
    task = get_task(name)
    item = task.load(data_dir, limit=1)[0]
    reference = task.reference_completion(item)
    for kind, junk in HOSTILE.items():
        for completion, want in [(junk, False),
                                 (junk + reference, name in SOLVED_AFTER.get(kind, {name}))]:
            start = time.monotonic()
            (grade,) = task.grade_many([(item, completion)])
            took = time.monotonic() - start
            assert took < 2.0, (kind, took)
            assert grade.solved is want and grade.error is None, (kind, grade)
            assert task.reward(item, completion) == float(want), kind


# ----------------------------------------------------------------------------- time limits

TOWER = "\\boxed{9^{9^{9^{9}}}}"  # sympy evaluates the power tower: hours of integer maths


def test_time_limit_stops_math_verify_and_records_the_error():
    task = get_task("math500")
    item = {"problem": "p", "answer": "1", "id": 0}
    previous = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    grades = task.grade_many([(item, TOWER), (item, "\\boxed{1}")], time_limit_s=1.0)
    assert time.monotonic() - start < 3.0
    assert grades[0] == Grade(solved=False, answer=None,
                              error="scoring took longer than the 1 s limit")
    assert grades[1] == Grade(solved=True, answer="1")
    assert signal.getsignal(signal.SIGALRM) is previous
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert math_equal("2\\sqrt{2}", "\\sqrt{8}")  # math-verify still works afterwards


class Spinning(MathProblems):
    """A task whose scoring never ends (in Python code), to test limits off the main thread."""

    def solved(self, item, completion):
        while True:
            time.sleep(0)


def test_time_limit_off_the_main_thread():
    task = Spinning(name="spin", data=math_files("x.jsonl"))
    out = {}

    def run():
        start = time.monotonic()
        out["grades"] = task.grade_many([({"answer": "1"}, "x")], time_limit_s=0.5)
        out["took"] = time.monotonic() - start

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    assert out["grades"][0].error == "scoring took longer than the 0.5 s limit"
    assert out["took"] < 2.0


def _spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.parametrize("in_thread", [False, True])
def test_time_limit_leaves_no_stray_timeout(in_thread):
    """Calls that end right at their deadline: a timeout is raised inside the call or not at
    all, never afterwards."""
    errors = []

    def run():
        try:
            for _ in range(25):
                try:
                    call_with_time_limit(lambda: _spin(0.02), 0.02)
                except ScoringTimeout:
                    pass
                _spin(0.03)
            assert call_with_time_limit(lambda: 7, 1.0) == 7
        except BaseException as e:  # a stray ScoringTimeout lands here
            errors.append(e)

    if in_thread:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join(30)
    else:
        run()
    assert errors == []
