"""Built-in tasks: deterministic disjoint splits, fixed shapes, exact verifiers checked against
hand cases and independent brute force, and the character tokenizer."""

import itertools
import time
from fractions import Fraction

import numpy as np
import pytest

from dllm_jax.errors import ConfigError
from dllm_jax.tasks import (
    TASKS,
    CharTokenizer,
    Example,
    Puzzle,
    encode_examples,
    get_puzzle,
    get_task,
    model_config,
    split_of,
)
from dllm_jax.tasks.sudoku import all_grids, count_solutions

PUZZLES = sorted(name for name, task in TASKS.items() if isinstance(task, Puzzle))


def _identity(name, ex):
    m = ex.meta
    if name == "addition":
        return f"{min(m['a'], m['b'])}+{max(m['a'], m['b'])}"
    if name == "sudoku":
        return m["puzzle"]
    if name == "digitsum":
        return m["digits"]
    return ",".join(map(str, sorted(m["numbers"]))) + f">{m['target']}"


def test_puzzle_names():
    assert PUZZLES == ["addition", "countdown", "digitsum", "sudoku"]


@pytest.mark.parametrize("name", PUZZLES)
def test_generators_deterministic_disjoint_fixed_shape_and_verified(name):
    task = get_task(name)
    train = task.generate(3, 300, "train")
    assert train == task.generate(3, 300, "train")
    assert train[:50] == task.generate(3, 50, "train")  # a shorter request is a prefix
    assert [e.prompt for e in task.generate(4, 50)] != [e.prompt for e in train[:50]]
    test = task.generate(3, 60, "test") + task.generate(9, 60, "test")
    ids_train = {_identity(name, e) for e in train}
    ids_test = {_identity(name, e) for e in test}
    assert len(ids_train) == 300
    assert not ids_train & ids_test  # disjoint across seeds too: the split hashes the identity
    assert all(split_of(i, task.test_fraction) == "train" for i in ids_train)
    assert {len(e.prompt) for e in train + test} == {task.prompt_length}
    assert max(len(e.answer) for e in train + test) <= task.answer_length
    assert all(task.verify(e, e.answer) == 1.0 for e in train + test)
    assert all(task.verify(e.meta, e.answer) == 1.0 for e in test)  # meta dicts work too
    assert all(task.format_reward(e.answer) == 1.0 for e in test)
    # Another item's answer is almost always wrong: the verifier is not trivially true.
    shuffled = np.mean([task.verify(e, f.answer) for e, f in zip(train, train[1:], strict=False)])
    assert shuffled < 0.1
    tok = CharTokenizer()
    enc = encode_examples(tok, train + test)
    assert enc["prompt_BP"].shape == (420, task.prompt_length)
    assert enc["answer_BA"].shape == (420, task.answer_length)
    assert enc["prompt_BP"].dtype == enc["answer_BA"].dtype == np.int32
    assert tok.decode(enc["answer_BA"][0]) == train[0].answer
    assert tok.decode(np.concatenate([enc["prompt_BP"][5], enc["answer_BA"][5]])) == (
        train[5].prompt + train[5].answer)
    for bad in ("", "   ", "garbage!!", "1" * 500, "(((", "9**9**9", "\ufffd_", None, 17):
        assert task.verify(train[0], bad) == 0.0
        assert task.format_reward(bad) == 0.0
    assert task.verify({}, train[0].answer) == 0.0 and task.verify(None, "1") == 0.0


def test_bad_specs_and_requests():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("chess")
    with pytest.raises(ValueError, match="unexpected keyword"):
        get_task("addition", digit=3)
    with pytest.raises(ValueError, match="digits"):
        get_task("addition", digits=0)
    with pytest.raises(ValueError, match="min_blanks"):
        get_task("sudoku", min_blanks=9, max_blanks=8)
    with pytest.raises(ValueError, match="max_blanks"):
        get_task("sudoku", max_blanks=13)
    with pytest.raises(ValueError, match="test_fraction"):
        get_task("countdown", test_fraction=1.0)
    with pytest.raises(ValueError, match="split"):
        get_task("addition").generate(0, 3, "validation")
    # One-digit addition has 55 unordered pairs: 100 distinct examples cannot exist.
    with pytest.raises(ValueError, match="could only draw"):
        get_task("addition", digits=1).generate(0, 100)
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="different lengths"):
        encode_examples(tok, [Example("1+1=", "2", {}), Example("10+1=", "11", {})])
    with pytest.raises(ValueError, match="longer than"):
        encode_examples(tok, [Example("1+1=", "22", {})], answer_length=1)
    with pytest.raises(ValueError, match="no examples"):
        encode_examples(tok, [])


def test_addition_hand_cases():
    task = get_task("addition")
    ex = task.make(123, 989)
    assert (ex.prompt, ex.answer) == ("123+989=", "2111")  # 1112 written backwards
    assert task.make(999, 999).answer == "8991" and task.make(0, 7).answer == "7000"
    assert task.verify(ex, " 2111 ") == 1.0
    for wrong in ("1112", "211", "21110", "2 111", "2111=", "+2111"):
        assert task.verify(ex, wrong) == 0.0
    assert task.format_reward("0000") == 1.0 and task.format_reward("000") == 0.0
    ex5 = get_task("addition", digits=5).generate(0, 1)[0]
    assert len(ex5.prompt) == 12 and len(ex5.answer) == 6


def _brute_force_grids():
    """All 4x4 grids, found without backtracking: rows are permutations, filter the rest."""
    perms = np.asarray(list(itertools.permutations(range(1, 5))))
    rows = perms[np.stack(np.meshgrid(*[np.arange(24)] * 4, indexing="ij"), -1).reshape(-1, 4)]
    cols_ok = np.all(np.sort(rows, axis=1) == np.arange(1, 5)[None, :, None], axis=(1, 2))
    g = rows[cols_ok]
    boxes = [g[:, r:r + 2, c:c + 2].reshape(len(g), 4) for r in (0, 2) for c in (0, 2)]
    ok = np.all([np.all(np.sort(b, 1) == np.arange(1, 5), 1) for b in boxes], axis=0)
    return g[ok].reshape(-1, 16)


def test_sudoku_unique_solutions_by_independent_brute_force():
    grids = _brute_force_grids()
    assert len(grids) == 288
    assert {tuple(x) for x in grids} == {tuple(x) for x in all_grids()}
    task = get_task("sudoku", min_blanks=8, max_blanks=12)
    examples = task.generate(1, 20, "test") + task.generate(1, 20, "train")
    blanks = []
    for ex in examples:
        puzzle = np.asarray([int(c) for c in ex.meta["puzzle"]])
        given = puzzle != 0
        blanks.append(int((~given).sum()))
        matches = grids[(grids[:, given] == puzzle[given]).all(1)]
        assert len(matches) == 1 and "".join(map(str, matches[0])) == ex.answer
        assert count_solutions(ex.meta["puzzle"], limit=5) == 1  # the backtracking solver agrees
    assert min(blanks) >= 8 and max(blanks) <= 12 and len(set(blanks)) > 1
    assert count_solutions("0" * 16, limit=1000) == 288
    ex = examples[0]
    p, s = ex.meta["puzzle"], ex.answer
    # A valid grid that contradicts a given cell, the solution with two cells swapped, a
    # malformed grid: all 0. A relabelled solution is a valid grid but breaks the givens.
    relabel = s.translate(str.maketrans("1234", "2341"))
    assert task.verify(ex, relabel) == 0.0
    i, j = next((i, j) for i in range(16) for j in range(16) if p[i] == p[j] == "0"
                and s[i] != s[j])
    swapped = list(s)
    swapped[i], swapped[j] = s[j], s[i]
    assert task.verify(ex, "".join(swapped)) == 0.0
    assert task.verify(ex, s[:15]) == 0.0 and task.verify(ex, s + "1") == 0.0
    assert task.cell_accuracy(ex, s) == 1.0 and task.cell_accuracy(ex, "") == 0.0
    assert task.cell_accuracy(ex, "".join(swapped)) == pytest.approx(
        1 - 2 / p.count("0"))


def _reachable(numbers, target):
    """Independent check: every order, operator pair and bracketing, exact integer division."""
    def op(o, x, y):
        if o == "/":
            return None if y == 0 or Fraction(x, y).denominator != 1 else x // y
        return {"+": x + y, "-": x - y, "*": x * y}[o]
    for a, b, c in itertools.permutations(numbers):
        for o1, o2 in itertools.product("+-*/", repeat=2):
            left = op(o1, a, b)
            right = op(o2, b, c)
            if (left is not None and op(o2, left, c) == target) or (
                    right is not None and op(o1, a, right) == target):
                return True
    return False


def test_countdown_verifier_hand_cases():
    task = get_task("countdown")
    ex = task.make([3, 4, 5], 35, "(3+4)*5")
    assert ex.prompt == "03,04,05>35="
    assert task.verify(ex, "(3+4)*5") == 1.0
    assert task.verify(ex, "5*(4+3)") == 1.0  # any correct equation, any order
    assert task.verify(ex, " ( 3 + 4 ) * 5 ") == 1.0
    assert task.verify(ex, "(3+4)*5+0") == 0.0  # an extra number
    assert task.verify(ex, "(3+3)*5") == 0.0  # reuse
    assert task.verify(ex, "7*5") == 0.0  # numbers not used
    assert task.verify(ex, "35") == 0.0
    assert task.verify(ex, "3+4*5") == 0.0  # wrong value (23)
    assert task.verify(ex, "(3+4)*5=35") == 0.0  # only the expression
    assert task.verify(ex, "(03+4)*5") == 0.0  # leading zero: not a Python integer literal
    assert task.verify(ex, "(3.0+4)*5") == 0.0
    assert task.verify(ex, "-(3-4)*5*7") == 0.0
    div = task.make([7, 2, 2], 7, "7*2/2")
    assert task.verify(div, "7*2/2") == 1.0  # exact division
    assert task.verify(div, "7/2*2") == 0.0  # 3.5 * 2: an inexact division is refused
    zero = task.make([5, 3, 3], 2, "5-(3/3)")
    assert task.verify(zero, "5/(3-3)") == 0.0
    assert task.verify(zero, "5-3/3") == 0.0 and task.verify(zero, "5-3+3") == 0.0
    assert task.verify(task.make([6, 3, 1], 3, "6/3+1"), "6/3+1") == 1.0
    assert task.verify(ex, "-3+4+5") == 0.0  # unary minus
    t0 = time.perf_counter()
    for attack in ("9**9**9", "9**9**9**9", "(3+4)**5", "3<<99999999", "__import__('os')",
                   "(" * 30 + "3" + ")" * 30, "9" * 60 + "*" + "9" * 3, "3+4;5", "[3,4,5]"):
        assert task.verify(ex, attack) == 0.0
        assert task.format_reward(attack) == 0.0
    assert time.perf_counter() - t0 < 0.5
    assert task.format_reward("1+2+3") == 1.0 and task.format_reward("1+2") == 0.0
    for e in task.generate(2, 200, "train") + task.generate(2, 50, "test"):
        assert _reachable(e.meta["numbers"], e.meta["target"])
        assert sorted(e.meta["numbers"]) == sorted(
            int(x) for x in e.prompt.split(">")[0].split(","))
        assert 1 <= e.meta["target"] <= task.max_target


def test_tokenizer_round_trip_errors_and_save(tmp_path):
    tok = CharTokenizer()
    text = "(12+3)*4=51, abc>z?"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) == len(text)
    assert tok.encode("7", add_bos=True, add_eos=True) == [tok.bos_id, tok.encode("7")[0],
                                                           tok.eos_id]
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, *tok.encode("99")]) == text
    assert tok.decode(np.asarray([*ids[:2], tok.mask_id, tok.pad_id])) == text[:2] + "_"
    assert tok.decode([*ids[:1], tok.vocab_size, 10**6, -1]) == text[:1] + "\ufffd" * 3
    assert tok.decode([tok.bos_id, *ids[:1], tok.eos_id], skip_special_tokens=False) == (
        "<bos>" + text[0] + "<eos>")
    assert len({tok.bos_id, tok.eos_id, tok.mask_id, *tok.encode(tok.chars)}) == tok.vocab_size
    assert tok.pad_id == tok.eos_id and tok.mask_id == tok.vocab_size - 1
    with pytest.raises(ValueError, match=r"character '€' at position 2"):
        tok.encode("12€")
    with pytest.raises(ValueError, match="repeat"):
        CharTokenizer("abca")
    with pytest.raises(ValueError, match="may not include"):
        CharTokenizer("ab_")
    assert not CharTokenizer.is_saved_in(tmp_path)
    with pytest.raises(FileNotFoundError, match="char_tokenizer.json"):
        CharTokenizer.load(tmp_path)
    small = CharTokenizer("0123456789+=")
    small.save(tmp_path)
    assert CharTokenizer.is_saved_in(tmp_path)
    back = CharTokenizer.load(tmp_path)
    assert back == small and back.mask_id == small.mask_id and back != tok
    (tmp_path / "char_tokenizer.json").write_text('{"type": "CharTokenizer", "chars": "01", '
                                                  '"mask_id": 9}')
    with pytest.raises(ValueError, match="mask_id"):
        CharTokenizer.load(tmp_path)
    (tmp_path / "char_tokenizer.json").write_text('{"chars": "0123"}')  # first-version file
    assert CharTokenizer.load(tmp_path) == CharTokenizer("0123")
    (tmp_path / "char_tokenizer.json").write_text('{"type": "Other", "chars": "0123"}')
    with pytest.raises(ValueError, match="not a CharTokenizer"):
        CharTokenizer.load(tmp_path)
    (tmp_path / "char_tokenizer.json").write_text("not json")
    with pytest.raises(ValueError, match="not JSON"):
        CharTokenizer.load(tmp_path)
    cfg = model_config(tok, hidden_size=64, num_layers=2, num_heads=4)
    assert cfg.vocab_size % 8 == 0 and tok.vocab_size <= cfg.vocab_size < tok.vocab_size + 8
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id) == (
        tok.mask_id, tok.eos_id, tok.pad_id, tok.bos_id)
    assert (cfg.family, cfg.head_dim, cfg.num_layers) == ("llada", 16, 2)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        model_config(tok, hidden_size=30, num_heads=4)


def test_verifiers_on_shared_benchmark_files(shared_dir):
    """d1's 4x4 Sudoku and Countdown test sets: every published solution verifies, every
    Countdown instance is solvable under the exact-division rule, and the backtracking solver's
    solution counts match the brute-force grid table (some d1 puzzles have several)."""
    from dllm_jax.data.records import load_records
    from dllm_jax.tasks import count_solutions, solve_countdown

    sudoku, countdown = get_task("sudoku"), get_task("countdown")
    grids = _brute_force_grids()
    rows = load_records(shared_dir / "data" / "sudoku_4x4_test.csv", fields=("Puzzle", "Solution"))
    assert len(rows) == 500
    multi = 0
    for r in rows:
        assert sudoku.verify({"puzzle": r["Puzzle"]}, r["Solution"]) == 1.0
        puzzle = np.asarray([int(c) for c in r["Puzzle"]])
        given = puzzle != 0
        n = int((grids[:, given] == puzzle[given]).all(1).sum())
        assert count_solutions(r["Puzzle"], limit=300) == n
        multi += n > 1
    assert multi > 0
    rows = load_records(shared_dir / "data" / "countdown_cd3_test.jsonl",
                        fields=("input", "output"))
    for r in rows:
        numbers, target = [int(x) for x in r["input"].split(",")], int(r["output"])
        expr = solve_countdown(numbers, target)
        assert expr is not None and _reachable(numbers, target)
        assert countdown.verify({"numbers": numbers, "target": target}, expr) == 1.0


def test_one_registry_lists_every_task():
    from dllm_jax import eval as eval_pkg
    from dllm_jax.tasks import Task, parse_task_list, registry

    everything = ["addition", "aime24", "aime25", "countdown", "digitsum", "gsm8k", "humaneval",
                  "math500", "mbpp", "sudoku"]
    assert sorted(TASKS) == everything and registry.TASKS is TASKS
    for name, task in TASKS.items():
        assert isinstance(task, Task) and task.name == name and get_task(name) is task
    typed = "gsm8k,math500,humaneval,mbpp,countdown,sudoku,aime24,aime25"  # `eval --tasks`
    assert ",".join(t.name for t in parse_task_list(typed)) == typed
    assert "TASKS" not in vars(eval_pkg) and "get_task" not in vars(eval_pkg)
    assert get_puzzle("sudoku") is TASKS["sudoku"]
    assert get_puzzle("addition", digits=2).answer_length == 3
    with pytest.raises(ConfigError, match="'gsm8k' has no generated examples; built-in "
                                          "puzzles: addition, countdown, digitsum, sudoku"):
        get_puzzle("gsm8k")


def test_each_function_is_defined_once_in_tasks():
    """solve_countdown, the verifiers and the rewards exist once across the tasks package."""
    import ast
    from pathlib import Path

    import dllm_jax.tasks

    names = []
    for path in sorted(Path(dllm_jax.tasks.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        names += [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert names.count("solve_countdown") == 1 and names.count("Task") == 1
    assert not any("countdown" in n or "sudoku" in n for n in names if n.endswith("_reward"))


def _exact(op, x, y):
    """``x op y`` over Fractions; None for a division that is not exact (the game's rule)."""
    if op == "/":
        return None if y == 0 or (x / y).denominator != 1 else x / y
    return {"+": x + y, "-": x - y, "*": x * y}[op]


def _candidates(numbers):
    """Every ``(a o b) o c`` and ``a o (b o c)`` with its value, computed independently."""
    for a, b, c in itertools.permutations(numbers):
        fa, fb, fc = Fraction(a), Fraction(b), Fraction(c)
        for o1, o2 in itertools.product("+-*/", repeat=2):
            left = _exact(o1, fa, fb)
            yield f"({a}{o1}{b}){o2}{c}", None if left is None else _exact(o2, left, fc)
            right = _exact(o2, fb, fc)
            yield f"{a}{o1}({b}{o2}{c})", None if right is None else _exact(o1, fa, right)


def _tagged(answer):
    return f"<reasoning>\nsteps\n</reasoning>\n<answer>\n{answer}\n</answer>"


def test_countdown_one_verifier_for_generated_and_d1_items(data_dir):
    """A d1 record loaded for evaluation and the same instance as a generated example are
    judged by one verifier: for every candidate expression, ``verify`` on the example, the
    benchmark reward and the benchmark score agree with an independent exact evaluation."""
    task = get_task("countdown")
    items = task.load(data_dir)
    assert len(items) == 256 and items[0]["numbers"] == [30, 100, 93] and items[0]["target"] == 23
    for item in items[:48]:
        numbers, target = item["numbers"], item["target"]
        example = task.make(numbers, target, "")
        solvable = False
        for expr, value in _candidates(numbers):
            want = 1.0 if value is not None and value == target else 0.0
            solvable |= want == 1.0
            assert task.verify(example, expr) == want, (numbers, target, expr)
            assert task.reward(item, _tagged(expr)) == want
            assert task.score(item, _tagged(expr)) == (want == 1.0)
        assert solvable
        assert task.score(item, task.reference_completion(item))
        assert task.verify(example, task.solution(item)) == 1.0


def test_sudoku_one_verifier_for_generated_and_d1_items(data_dir):
    """d1's puzzles, loaded for evaluation and rebuilt as generated examples, are solved by
    exactly the grids the brute-force table says solve them (any of several), while the reward
    is d1's partial credit against the published solution."""
    task = get_task("sudoku")
    grids = _brute_force_grids()
    items = task.load(data_dir)
    assert len(items) == 500
    several = 0
    for k, item in enumerate(items):
        puzzle, published = item["puzzle"], item["solution"]
        example = task.make(puzzle, published)
        cells = np.asarray([int(c) for c in puzzle])
        given = cells != 0
        solutions = {"".join(map(str, g)) for g in grids[(grids[:, given] == cells[given]).all(1)]}
        if len(solutions) > 1:  # any solution solves it; d1's credit compares cells
            several += min(task.reward(item, _tagged(g)) for g in solutions) < 1.0
        other = items[(k + 1) % len(items)]["solution"]
        relabelled = published.translate(str.maketrans("1234", "2341"))
        empty = [i for i in range(16) if puzzle[i] == "0"]
        for grid in sorted(solutions) + [other, relabelled, published[::-1]]:
            want = grid in solutions
            assert task.verify(example, grid) == float(want)
            assert task.score(item, _tagged(grid)) == want
            credit = sum(grid[i] == published[i] for i in empty) / len(empty)
            assert task.reward(item, _tagged(grid)) == pytest.approx(credit, abs=1e-12)
            assert task.cell_accuracy(example, grid) == pytest.approx(credit, abs=1e-12)
    assert several > 0


@pytest.mark.parametrize("name", PUZZLES)
def test_worded_face_reuses_the_verifier(name):
    """The worded prompt of a generated example names its data, and the reward of a tagged
    answer is ``verify`` of that answer (the example's own answer, another's, none)."""
    task = get_task(name)
    examples = task.generate(5, 40, "test")
    for ex, other in zip(examples, examples[1:] + examples[:1], strict=True):
        text = task.prompt_text(ex.meta)
        assert "<answer>" in text
        assert all(str(v) in text for k, v in ex.meta.items() if k in ("a", "b", "target",
                                                                         "puzzle"))
        assert task.reward(ex.meta, task.reference_completion(ex.meta)) == 1.0
        assert task.solved(ex.meta, _tagged(ex.answer))
        verdict = task.verify(ex, other.answer)
        assert task.solved(ex.meta, _tagged(other.answer)) == (verdict == 1.0)
        partial = task.cell_accuracy(ex, other.answer) if name == "sudoku" else verdict
        assert task.reward(ex.meta, _tagged(other.answer)) == partial
        assert task.reward(ex.meta, ex.answer) == 0.0  # no answer block: no reward
    assert np.mean([task.verify(e, f.answer) for e, f in zip(examples, examples[1:],
                                                              strict=False)]) < 0.2


def test_sudoku_grid_split_parts_share_no_grid():
    """The grid-level split: four disjoint parts covering all 288 grids, each part's puzzles
    solved only by its own grids (checked with the backtracking solver)."""
    from dllm_jax.tasks.sudoku import all_grids, grid_split_indices, solve_all

    parts = {n: set(grid_split_indices(n).tolist()) for n in ("sft", "rl", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 288
    assert set().union(*parts.values()) == set(range(288))
    grids = {"".join(map(str, g)): i for i, g in enumerate(all_grids())}
    for name in ("sft", "test"):
        task = get_puzzle("sudoku", grid_split=name)
        for ex in task.generate(0, 40):
            (sol,) = solve_all([int(c) for c in ex.meta["puzzle"]])
            assert grids["".join(map(str, sol))] in parts[name]
    with pytest.raises(ConfigError, match="grid_split must be one of"):
        get_puzzle("sudoku", grid_split="train")


def test_countdown_number_split_parts_share_no_numbers():
    """The family-level Countdown split: every multiset of numbers falls in one part, in about
    the declared shares (counted over all 4960 multisets of 1..30), and each part's instances
    use only its own multisets and are solvable by their reference answers."""
    import itertools

    from dllm_jax.tasks.common import family_part
    from dllm_jax.tasks.countdown import NUMBER_SPLITS

    families = [",".join(map(str, t)) for t in
                itertools.combinations_with_replacement(range(1, 31), 3)]
    assert len(families) == 4960
    counts = {n: 0 for n in NUMBER_SPLITS}
    for f in families:
        counts[family_part(f, NUMBER_SPLITS)] += 1
    for name, share in NUMBER_SPLITS.items():
        assert abs(counts[name] / len(families) - share) < 0.03, (name, counts)
    seen = {}
    for name in NUMBER_SPLITS:
        task = get_puzzle("countdown", number_split=name)
        for ex in task.generate(0, 60):
            fam = ",".join(map(str, sorted(ex.meta["numbers"])))
            assert family_part(fam, NUMBER_SPLITS) == name and task.verify(ex, ex.answer) == 1.0
            assert seen.setdefault(fam, name) == name
    with pytest.raises(ConfigError, match="number_split must be one of"):
        get_puzzle("countdown", number_split="train")


def test_task_options_parse_and_refuse():
    from dllm_jax.programs.config import DataSpec, task_options

    assert task_options("grid_split=rl, min_blanks=4") == {"grid_split": "rl", "min_blanks": 4}
    with pytest.raises(ValueError, match="not name=value"):
        DataSpec(task="sudoku", task_options="grid_split")
